//! Micro-benchmarks of the CPU-bound steps a message passes through: the inbound DATA
//! decoder, classification and S/MIME encryption, each per message size.
//!
//! Run with `cargo bench --bench pipeline`; `bench/run.py` runs them after the SMTP
//! benchmarks. The certificate is generated at start-up in a temporary folder.

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sealgate::config::Config;
use sealgate::inbound::DataDecoder;
use sealgate::policy::classify::{Classifier, ClassifyConfig};
use sealgate::smime::{CertificateDirectory, Smime, SmimeOutcome};

#[allow(dead_code)]
#[path = "../tests/smime/pki.rs"]
mod pki;

const SIZES: [(&str, usize); 5] = [
    ("1KB", 1024),
    ("10KB", 10 * 1024),
    ("100KB", 100 * 1024),
    ("1MB", 1024 * 1024),
    ("10MB", 10 * 1024 * 1024),
];

/// Size from which a benchmark takes the minimum sample count, to keep the run short.
const LARGE: usize = 1024 * 1024;

const RECIPIENT: &str = "bob@partner.example";

/// Builds a plain-text message of about `size` bytes with CRLF line endings, like the
/// load that `bench/run.py` sends.
fn message(size: usize, subject: &str) -> Vec<u8> {
    let header = format!(
        "From: <bench.sender@clinic.example.org>\r\nTo: <{RECIPIENT}>\r\n\
         Subject: {subject}\r\nMessage-ID: <1@bench.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    );
    let line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    let mut message = header.into_bytes();
    while message.len() + line.len() <= size {
        message.extend_from_slice(line);
    }
    message
}

/// Turns a message into the bytes a client sends after DATA: dot-stuffed, then the final
/// `.` line.
fn wire_data(message: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(message.len() + 16);
    for line in message.split_inclusive(|&byte| byte == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

/// Benchmarks `routine` on the input that `input` builds for each of [`SIZES`], with the
/// throughput in input bytes.
fn bench_per_size<T>(
    criterion: &mut Criterion,
    group_name: &str,
    input: impl Fn(usize) -> Vec<u8>,
    mut routine: impl FnMut(&[u8]) -> T,
) {
    let mut group = criterion.benchmark_group(group_name);
    for (name, size) in SIZES {
        let bytes = input(size);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        if size >= LARGE {
            group.sample_size(10);
        }
        group.bench_with_input(BenchmarkId::from_parameter(name), &bytes, |bench, bytes| {
            bench.iter(|| black_box(routine(bytes)));
        });
    }
    group.finish();
}

fn data_decoder(criterion: &mut Criterion) {
    let input = |size| wire_data(&message(size, "benchmark"));
    bench_per_size(criterion, "data_decoder", input, |wire| {
        let mut decoder = DataDecoder::new(64 * 1024 * 1024, 1000);
        // The session reads the socket in 64 KiB buffers.
        for chunk in wire.chunks(64 * 1024) {
            if decoder.feed(chunk).is_some() {
                break;
            }
        }
        let (body, flaws) = decoder.finish();
        assert!(!flaws.any(), "the benchmark message has flaws: {flaws:?}");
        body
    });
}

fn classification(criterion: &mut Criterion) {
    let classifier = Classifier::new(&ClassifyConfig::default()).expect("default rules compile");
    let input = |size| {
        let message = message(size, "benchmark");
        assert!(
            !classifier.classify(&message).is_sensitive(),
            "the benchmark message must not be sensitive, so every rule reads all of it"
        );
        message
    };
    bench_per_size(criterion, "classify", input, |message| {
        classifier.classify(message)
    });
}

fn smime_encryption(criterion: &mut Criterion) {
    let folder = tempfile::tempdir().expect("create temporary folder");
    let keys = folder.path().join("keys");
    std::fs::create_dir_all(keys.join("recipients")).unwrap();
    let authority = pki::Authority::new("sealgate bench CA");
    let identity = authority.issue(&pki::Spec::recipient(RECIPIENT));
    std::fs::write(keys.join("recipients/bob.pem"), identity.certificate_pem()).unwrap();
    let config = Config::parse(
        &format!("[server]\nkeys_dir = {:?}\n", keys.display().to_string()),
        Path::new("bench.toml"),
    )
    .expect("valid config");
    let directory = CertificateDirectory::load(&config).expect("load certificate folder");
    let certificate = directory
        .lookup(RECIPIENT)
        .expect("the generated certificate is usable");
    let smime = Smime::new(&config).expect("S/MIME from config");

    let input = |size| message(size, "[secure] benchmark");
    bench_per_size(criterion, "smime_encrypt", input, |message| {
        match smime.encrypt_for(message, RECIPIENT, certificate) {
            Ok(SmimeOutcome::Encrypted(bytes)) => bytes,
            Ok(SmimeOutcome::AlreadyEncrypted(_)) => panic!("reported as already encrypted"),
            Err(error) => panic!("encryption failed: {error}"),
        }
    });
}

criterion_group!(benches, data_decoder, classification, smime_encryption);
criterion_main!(benches);
