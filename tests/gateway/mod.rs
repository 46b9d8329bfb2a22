//! Runs the real `sealgate` binary for end-to-end tests: writes a config and a TLS
//! certificate into a folder, starts `sealgate serve --config` with the listener on port 0,
//! reads the bound address back from the log, and collects the log for assertions.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mail_send::SmtpClientBuilder;

/// A running gateway process.
pub struct Gateway {
    child: Child,
    /// The SMTP listener's address.
    pub smtp: SocketAddr,
    /// The admin pages' address, when they started.
    pub admin: Option<SocketAddr>,
    /// Folder with `sealgate.toml`, `data/` and `keys/`.
    pub dir: PathBuf,
    log: Arc<(Mutex<String>, Condvar)>,
}

impl Gateway {
    /// Starts the binary on `dir/sealgate.toml` (written from `config`) and waits until its
    /// listener is up. `config` should set `listen = ["127.0.0.1:0"]` and paths inside `dir`.
    pub fn start(dir: &Path, config: &str) -> Gateway {
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        if !dir.join("keys/tls.crt").exists() {
            write_self_signed(&dir.join("keys"));
        }
        // Queued bodies are encrypted, so the gateway does not start without a master key.
        sealgate::store::ensure_master_key(&dir.join("keys")).unwrap();
        let config_path = dir.join("sealgate.toml");
        // The portal listens on port 0 as well, unless the config names its address, so
        // parallel gateways do not compete for its default port.
        let config = if config.contains("[portal]\nlisten = ") {
            config.to_string()
        } else if config.contains("[portal]\n") {
            config.replacen("[portal]\n", "[portal]\nlisten = \"127.0.0.1:0\"\n", 1)
        } else {
            format!("{config}\n[portal]\nlisten = \"127.0.0.1:0\"\n")
        };
        // So do the admin pages, over plain HTTP on loopback unless a test sets more.
        let config = if config.contains("[admin]\n") {
            config.replacen("[admin]\n", "[admin]\nlisten = \"127.0.0.1:0\"\n", 1)
        } else {
            format!("{config}\n[admin]\nlisten = \"127.0.0.1:0\"\ntls = false\n")
        };
        std::fs::write(&config_path, config).unwrap();

        let mut child = Command::new(env!("CARGO_BIN_EXE_sealgate"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start the sealgate binary");
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (text, ready) = &*sink;
                let mut text = text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
                ready.notify_all();
            }
        });

        let mut gateway = Gateway {
            child,
            smtp: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            dir: dir.to_owned(),
            log,
        };
        let line = gateway
            .wait_for_log("SMTP listener started", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("gateway did not start; log:\n{}", gateway.log()));
        let address = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("address="))
            .expect("listener line names its address");
        gateway.smtp = address.parse().unwrap();
        gateway.admin = gateway
            .log()
            .lines()
            .find(|line| line.contains("admin pages listening"))
            .and_then(|line| {
                line.split_whitespace()
                    .find_map(|field| field.strip_prefix("address="))
                    .and_then(|address| address.parse().ok())
            });
        gateway
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_for_lines(needle, 1, timeout)
            .map(|mut lines| lines.remove(0))
    }

    /// Waits until `count` log lines contain `needle`.
    pub fn wait_for_lines(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Option<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let (text, ready) = &*self.log;
        let mut text = text.lock().unwrap();
        loop {
            let lines: Vec<String> = text
                .lines()
                .filter(|line| line.contains(needle))
                .map(str::to_owned)
                .collect();
            if lines.len() >= count {
                return Some(lines);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            text = ready.wait_timeout(text, deadline - now).unwrap().0;
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs `sealgate queue ...` against this gateway's config and returns stdout.
    pub fn queue_command(&self, args: &[&str]) -> String {
        self.command("queue", args)
    }

    /// Runs `sealgate <command> ...` against this gateway's config with `stdin` as its
    /// standard input, and returns the whole output, failed or not.
    pub fn command_output(&self, command: &str, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sealgate"))
            .arg(command)
            .arg("--config")
            .arg(self.dir.join("sealgate.toml"))
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs `sealgate <command> ...` against this gateway's config and returns stdout.
    pub fn command(&self, command: &str, args: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_sealgate"))
            .arg(command)
            .arg("--config")
            .arg(self.dir.join("sealgate.toml"))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "sealgate {command} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Returns a `[portal]` table for plain HTTP on `127.0.0.1:port`, with links to that address.
pub fn plain_portal(port: u16, extra: &str) -> String {
    format!(
        "[portal]\nlisten = \"127.0.0.1:{port}\"\ntls = false\n\
         base_url = \"http://127.0.0.1:{port}\"\norganisation = \"Riverside Health Centre\"\n{extra}\n"
    )
}

/// Returns a static route that sends mail for `domain` to `127.0.0.1:port`.
pub fn route_to(domain: &str, port: u16) -> String {
    format!("[[delivery.routes]]\ndomain = \"{domain}\"\nhost = \"127.0.0.1\"\nport = {port}\n")
}

/// Returns the portal link token in a notification's text.
pub fn link_token(notification: &str, base_url: &str) -> String {
    let start = notification
        .find(&format!("{base_url}/m/"))
        .unwrap_or_else(|| panic!("no portal link in {notification}"));
    notification[start + base_url.len() + 3..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// Writes a self-signed `tls.crt` and `tls.key` for `localhost` into `keys`.
pub fn write_self_signed(keys: &Path) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(keys.join("tls.crt"), certified.cert.pem()).unwrap();
    std::fs::write(keys.join("tls.key"), certified.signing_key.serialize_pem()).unwrap();
}

/// The config every end-to-end test starts from: listener on port 0, data and keys in the
/// test folder, one-second retries for an hour. `extra` is appended (further tables).
pub fn base_config(dir: &Path, extra: &str) -> String {
    config_with_lifetime(dir, "1h", extra)
}

/// As [`base_config`], with `queue.max_lifetime` set to `lifetime`.
pub fn config_with_lifetime(dir: &Path, lifetime: &str, extra: &str) -> String {
    format!(
        r#"[server]
hostname = "gateway.test.example"
data_dir = "{data}"
keys_dir = "{keys}"

[inbound]
listen = ["127.0.0.1:0"]
# Some tests open up to 40 sessions at once, all from 127.0.0.1.
max_sessions_per_client = 50

[queue]
retry_schedule = ["1s"]
max_lifetime = "{lifetime}"
scan_interval = "200ms"

{extra}
"#,
        data = dir.join("data").display(),
        keys = dir.join("keys").display(),
    )
}

/// Sends one message over SMTP (mail-send, no TLS) with CRLF line endings and returns the
/// queue id from the `250` reply.
pub async fn send(gateway: SocketAddr, from: &str, to: &[&str], body: &str) -> String {
    let mut client = SmtpClientBuilder::new("127.0.0.1".to_string(), gateway.port())
        .expect("builder for a loopback address")
        .implicit_tls(false)
        .helo_host("staff-mta.clinic.example.org")
        .timeout(Duration::from_secs(30))
        .connect_plain()
        .await
        .expect("connect to the gateway");
    let body = body.replace("\r\n", "\n").replace('\n', "\r\n");
    let message = mail_send::smtp::message::Message::new(from, to.to_vec(), body.into_bytes());
    let reply = client
        .send(message)
        .await
        .expect("gateway accepted the message");
    assert_eq!(reply.code(), 250);
    let text = reply.message().to_string();
    let _ = client.quit().await;
    let id = text.rsplit(' ').next().unwrap().to_string();
    assert_eq!(id.len(), 16, "queue id in {text:?}");
    id
}
