//! A private Postfix instance for tests: its own config, queue and log folder, an SMTP
//! listener on a loopback port, and a relay host. It plays the staff mail server that uses
//! sealgate as its smarthost.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running Postfix; stopped on drop.
pub struct Postfix {
    config: PathBuf,
    root: PathBuf,
    /// Where Postfix's smtpd listens.
    pub smtp: SocketAddr,
}

/// Why Postfix cannot run here.
pub fn unavailable() -> Option<String> {
    if !Path::new("/usr/sbin/postfix").exists() {
        return Some("postfix is not installed (Debian package postfix)".into());
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("starting Postfix needs root".into());
    }
    None
}

impl Postfix {
    /// Starts Postfix in `root` with smtpd on `smtp` and `relayhost` as its next hop for all
    /// mail, with `smtp_tls_security_level = tls_level`.
    pub fn start(root: &Path, smtp: SocketAddr, relayhost: SocketAddr, tls_level: &str) -> Postfix {
        let config = root.join("conf");
        let queue = root.join("queue");
        let data = root.join("data");
        for folder in [&config, &queue, &data] {
            std::fs::create_dir_all(folder).unwrap();
        }
        // The postfix user must reach the queue through the test's temporary folders.
        let mut folder = Some(root);
        while let Some(path) = folder {
            if path.starts_with(std::env::temp_dir()) && path != std::env::temp_dir() {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            folder = path.parent();
        }
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(&data)
            .status()
            .unwrap();
        assert!(chown.success(), "chown postfix {}", data.display());

        std::fs::write(
            config.join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = staff-mta.clinic.example.org
mydomain = clinic.example.org
myorigin = clinic.example.org
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [{relay_ip}]:{relay_port}
smtp_tls_security_level = {tls_level}
smtp_tls_loglevel = 1
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
smtp_dns_support_level = disabled
disable_dns_lookups = yes
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = no
",
                queue = queue.display(),
                data = data.display(),
                root = root.display(),
                relay_ip = relayhost.ip(),
                relay_port = relayhost.port(),
            ),
        )
        .unwrap();
        // The services other than smtpd are shared with bench/run.py.
        std::fs::write(
            config.join("master.cf"),
            format!("{smtp} inet n - n - - smtpd\n{}", include_str!("master.cf")),
        )
        .unwrap();

        let status = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&config)
            .arg("start")
            .status()
            .unwrap();
        let postfix = Postfix {
            config,
            root: root.to_owned(),
            smtp,
        };
        assert!(
            status.success(),
            "postfix start failed; maillog:\n{}",
            postfix.maillog()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(smtp).is_err() {
            assert!(
                Instant::now() < deadline,
                "postfix did not listen on {smtp}; maillog:\n{}",
                postfix.maillog()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        postfix
    }

    /// Postfix's own log.
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.root.join("maillog")).unwrap_or_default()
    }

    /// Waits for a maillog line containing every needle.
    pub fn wait_for_maillog(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.maillog();
            if let Some(line) = log
                .lines()
                .find(|line| needles.iter().all(|needle| line.contains(needle)))
            {
                return Some(line.to_owned());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.config)
            .arg("stop")
            .status();
    }
}
