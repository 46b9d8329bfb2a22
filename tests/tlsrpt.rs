//! TLS-RPT end to end: the real binary delivers over MX records from the loopback DNS
//! server, `sealgate tlsrpt send` queues the reports, and they arrive at Postfix's
//! `smtp-sink`, where the gzipped JSON is unpacked and its counts checked.

mod common;
mod gateway;

use std::io::Read;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{DnsServer, ServerScript, SmtpServer, SmtpSink, TestPki, Zone};
use gateway::{Gateway, base_config};
use serde_json::Value;

const OPEN_DOMAIN: &str = "rpt.test";
const STRICT_DOMAIN: &str = "strict.test";
const MX_HOST: &str = "mx.rpt.test";
/// The secure domain's MX host, which the server's certificate does not name.
const STRICT_MX: &str = "mx.strict.test";

fn submit(gateway: &Gateway, to: &str) {
    let output = Command::new("swaks")
        .args(["--server", &gateway.smtp.to_string()])
        .args(["--from", "ada@clinic.example.org", "--to", to])
        .args(["--h-Subject", "tls report test", "--body", "hello"])
        .output()
        .expect("run swaks");
    assert!(
        output.status.success(),
        "swaks failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Finds the `application/tlsrpt+gzip` part of a dumped message and returns its JSON.
fn report_json(dump: &str) -> Value {
    let start = dump
        .find("application/tlsrpt+gzip")
        .expect("report part in the message");
    let part = &dump[start..];
    let body_start = part
        .find("\r\n\r\n")
        .map(|index| index + 4)
        .unwrap_or_else(|| part.find("\n\n").expect("end of the part headers") + 2);
    let encoded: String = part[body_start..]
        .lines()
        .take_while(|line| !line.starts_with("--") && !line.trim().is_empty())
        .collect();
    let gzipped = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .expect("base64 report");
    let mut json = String::new();
    flate2::read::GzDecoder::new(gzipped.as_slice())
        .read_to_string(&mut json)
        .expect("gzip report");
    serde_json::from_str(&json).expect("JSON report")
}

fn wait_for_reports(sink: &SmtpSink, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let messages: Vec<String> = sink
            .messages()
            .into_iter()
            .filter(|message| message.contains("TLS-Report-Domain"))
            .collect();
        if messages.len() >= count || Instant::now() > deadline {
            return messages;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsrpt_report_reaches_sink_with_counts() {
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.server(MX_HOST))).await;
    let dumps = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start_dumping(dumps.path());
    let zone = Zone::new()
        .mx(OPEN_DOMAIN, 10, MX_HOST)
        .a(MX_HOST, Ipv4Addr::LOCALHOST)
        .txt(
            &format!("_smtp._tls.{OPEN_DOMAIN}"),
            "v=TLSRPTv1; rua=mailto:tls-reports@sink.test,https://reports.test/v1",
        )
        .mx(STRICT_DOMAIN, 10, STRICT_MX)
        .a(STRICT_MX, Ipv4Addr::LOCALHOST)
        .txt(
            &format!("_smtp._tls.{STRICT_DOMAIN}"),
            "v=TLSRPTv1; rua=mailto:strict-reports@sink.test",
        );
    let dns = DnsServer::start(zone).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    std::fs::copy(
        pki.dir().join(TestPki::CA_FILE),
        dir.path().join("keys").join(TestPki::CA_FILE),
    )
    .unwrap();
    let extra = format!(
        "[policy]\nsecure_domains = [\"{STRICT_DOMAIN}\"]\n\n\
         [delivery]\ndns_servers = [\"{dns}\"]\nmx_port = {mx_port}\nwebpki_roots = false\n\
         trust_anchors = [\"{ca}\"]\nmta_sts = false\n\n\
         [[delivery.routes]]\ndomain = \"sink.test\"\nhost = \"127.0.0.1\"\nport = {sink}\n",
        dns = dns.addr(),
        mx_port = smtp.port(),
        ca = TestPki::CA_FILE,
        sink = sink.port(),
    );
    let gateway = Gateway::start(dir.path(), &base_config(dir.path(), &extra));

    submit(&gateway, &format!("gp1@{OPEN_DOMAIN}"));
    submit(&gateway, &format!("gp2@{OPEN_DOMAIN}"));
    submit(&gateway, &format!("gp@{STRICT_DOMAIN}"));
    let wait = Duration::from_secs(20);
    let sent = gateway.wait_for_lines("status=sent", 2, wait);
    assert!(sent.is_some(), "log:\n{}", gateway.log());
    for line in sent.unwrap() {
        assert!(
            line.contains("/unverified/none, dkim=none, route=opportunistic"),
            "{line}"
        );
    }
    let deferred = gateway.wait_for_log("status=deferred", wait);
    assert!(deferred.is_some(), "log:\n{}", gateway.log());
    let deferred = deferred.unwrap();
    assert!(deferred.contains("tls=failed/ca"), "{deferred}");

    let output = gateway.command("tlsrpt", &["send"]);
    assert!(output.contains("2 reports queued"), "{output}");

    let reports = wait_for_reports(&sink, 2);
    assert_eq!(reports.len(), 2, "log:\n{}", gateway.log());
    let open = reports
        .iter()
        .find(|message| message.contains(&format!("TLS-Report-Domain: {OPEN_DOMAIN}")))
        .expect("report for the open domain");
    let strict = reports
        .iter()
        .find(|message| message.contains(&format!("TLS-Report-Domain: {STRICT_DOMAIN}")))
        .expect("report for the strict domain");
    assert!(
        open.contains("Report Domain: rpt.test Submitter: gateway.test.example"),
        "{open}"
    );
    assert!(open.contains("multipart/report"));
    assert!(open.contains("report-type=\"tlsrpt\"") || open.contains("report-type=tlsrpt"));

    let open = report_json(open);
    assert_eq!(open["organization-name"], "gateway.test.example");
    let policy = &open["policies"][0];
    assert_eq!(policy["policy"]["policy-type"], "no-policy-found");
    assert_eq!(policy["policy"]["policy-domain"], OPEN_DOMAIN);
    assert_eq!(policy["summary"]["total-successful-session-count"], 2);
    assert_eq!(policy["summary"]["total-failure-session-count"], 0);

    let strict = report_json(strict);
    let policy = &strict["policies"][0];
    let failures = policy["summary"]["total-failure-session-count"]
        .as_i64()
        .unwrap();
    assert!(failures >= 1, "{strict}");
    assert_eq!(policy["summary"]["total-successful-session-count"], 0);
    let detail = &policy["failure-details"][0];
    assert_eq!(detail["result-type"], "certificate-host-mismatch");
    assert_eq!(detail["receiving-mx-hostname"], STRICT_MX);
    assert_eq!(detail["receiving-ip"], "127.0.0.1");

    // The results were cleared with the reports, so the open domain, which has had no
    // delivery since, is not reported again. The strict domain keeps retrying.
    let output = gateway.command("tlsrpt", &["send"]);
    assert!(!output.contains(&format!("\n{OPEN_DOMAIN}:")), "{output}");
    assert!(!output.starts_with(&format!("{OPEN_DOMAIN}:")), "{output}");
}
