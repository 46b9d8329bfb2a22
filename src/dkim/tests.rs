use std::path::Path;

use super::*;

/// Builds a config whose keys are generated into `keys`, one per (domain, selector,
/// algorithm).
fn config_with_keys(keys: &Path, entries: &[(&str, &str, DkimAlgorithm)]) -> Config {
    let mut config = Config::default();
    config.server.keys_dir = keys.to_owned();
    for (domain, selector, algorithm) in entries {
        generate_key(&keys.join(default_key_file(domain, selector)), *algorithm).unwrap();
        config.dkim.push(DkimKeyConfig {
            domain: (*domain).into(),
            selector: (*selector).into(),
            key: None,
            algorithm: *algorithm,
            expire_after: None,
        });
    }
    config
}

fn unfolded(fields: &[u8]) -> String {
    String::from_utf8(fields.to_vec())
        .unwrap()
        .replace("\r\n\t", " ")
}

const MESSAGE: &[u8] =
    b"From: Ada <ada@clinic.example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello.\r\n";

#[test]
fn signature_tags_follow_policy() {
    let keys = tempfile::tempdir().unwrap();
    let mut config = config_with_keys(
        keys.path(),
        &[("example.org", "sel1", DkimAlgorithm::Ed25519Sha256)],
    );
    config.dkim[0].expire_after = Some(ConfigDuration::secs(86_400));
    let signer = MessageSigner::load(&config).unwrap();
    let signatures = signer.sign(MESSAGE).unwrap();
    assert_eq!(signatures.signers, ["example.org/sel1"]);
    let text = unfolded(&signatures.fields);
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
        "{text}"
    );
    assert!(text.ends_with(";\r\n"), "{text}");
    assert!(text.contains("d=example.org"), "{text}");
    assert!(text.contains("c=relaxed/relaxed"), "{text}");
    assert!(!text.contains(" l="), "{text}");
    let tag = |name: &str| {
        text.split(';')
            .find_map(|pair| pair.trim().strip_prefix(&format!("{name}=")))
            .map(|value| value.split_whitespace().collect::<String>())
    };
    let t: u64 = tag("t").unwrap().parse().unwrap();
    let x: u64 = tag("x").unwrap().parse().unwrap();
    assert_eq!(x - t, 86_400);
    let signed = tag("h").unwrap().to_ascii_lowercase();
    assert_eq!(signed.split(':').filter(|name| *name == "from").count(), 2);
    assert!(
        signed.contains("subject") && signed.contains("to"),
        "{signed}"
    );
}

#[test]
fn signing_domain_is_from_domain_or_parent() {
    let keys = tempfile::tempdir().unwrap();
    let config = config_with_keys(
        keys.path(),
        &[
            ("example.org", "rsa1", DkimAlgorithm::RsaSha256),
            ("example.org", "ed1", DkimAlgorithm::Ed25519Sha256),
            (
                "lab.clinic.example.org",
                "lab1",
                DkimAlgorithm::Ed25519Sha256,
            ),
        ],
    );
    let signer = MessageSigner::load(&config).unwrap();
    let cases = [
        ("example.org", Some("example.org")),
        ("clinic.example.org", Some("example.org")),
        ("lab.clinic.example.org", Some("lab.clinic.example.org")),
        ("x.lab.clinic.example.org", Some("lab.clinic.example.org")),
        ("example.net", None),
        ("org", None),
    ];
    for (author, expected) in cases {
        assert_eq!(signer.signing_domain(author), expected, "{author}");
    }
    let dual = signer.sign(MESSAGE).unwrap();
    assert_eq!(dual.signers, ["example.org/rsa1", "example.org/ed1"]);
    assert_eq!(dual.log_value(), "example.org/rsa1+example.org/ed1");
    let text = unfolded(&dual.fields);
    assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
}

#[test]
fn mail_without_key_or_from_is_unsigned() {
    let keys = tempfile::tempdir().unwrap();
    let config = config_with_keys(
        keys.path(),
        &[("example.org", "sel1", DkimAlgorithm::Ed25519Sha256)],
    );
    let signer = MessageSigner::load(&config).unwrap();
    let messages: [&[u8]; 4] = [
        b"From: someone@example.net\r\nSubject: x\r\n\r\nbody\r\n",
        b"Subject: no from\r\n\r\nbody\r\n",
        b"From: undisclosed-recipients:;\r\n\r\nbody\r\n",
        b"\xff\xfe\x00garbage",
    ];
    for message in messages {
        let signatures = signer.sign(message).unwrap();
        assert!(signatures.fields.is_empty(), "{message:?}");
        assert_eq!(signatures.log_value(), "none");
        assert_eq!(signatures.apply(message), message);
    }
}

#[test]
fn author_domain_reads_first_from_address() {
    let cases: [(&[u8], Option<&str>); 4] = [
        (
            b"From: \"A, B\" <a@Clinic.Example.ORG>\r\n\r\n",
            Some("clinic.example.org"),
        ),
        (b"from: a@x.example, b@y.example\r\n\r\n", Some("x.example")),
        (b"To: a@x.example\r\n\r\n", None),
        (b"From: no-domain\r\n\r\n", None),
    ];
    for (message, expected) in cases {
        assert_eq!(author_domain(message).as_deref(), expected, "{message:?}");
    }
}

#[test]
fn unusable_keys_name_the_file() {
    let keys = tempfile::tempdir().unwrap();
    let mut config = config_with_keys(
        keys.path(),
        &[("example.org", "ed1", DkimAlgorithm::Ed25519Sha256)],
    );
    config.dkim[0].algorithm = DkimAlgorithm::RsaSha256;
    let error = MessageSigner::load(&config).err().unwrap().to_string();
    assert!(error.contains("dkim/example.org.ed1.pem"), "{error}");
    assert!(error.contains("got an Ed25519 key"), "{error}");

    let small = openssl::rsa::Rsa::generate(1024).unwrap();
    let small = openssl::pkey::PKey::from_rsa(small).unwrap();
    let path = keys.path().join("dkim/small.pem");
    std::fs::write(&path, small.private_key_to_pem_pkcs8().unwrap()).unwrap();
    config.dkim[0].key = Some("dkim/small.pem".into());
    let error = MessageSigner::load(&config).err().unwrap().to_string();
    assert!(error.contains("small.pem"), "{error}");
    assert!(
        error.contains("1024 bits, expected 2048 to 4096"),
        "{error}"
    );

    std::fs::write(&path, "not a key").unwrap();
    config.dkim[0].algorithm = DkimAlgorithm::Ed25519Sha256;
    let error = MessageSigner::load(&config).err().unwrap().to_string();
    assert!(
        error.contains("small.pem: not a PEM private key"),
        "{error}"
    );

    config.dkim[0].key = Some("dkim/absent.pem".into());
    let error = MessageSigner::load(&config).err().unwrap().to_string();
    assert!(error.starts_with("failed to read DKIM key"), "{error}");
    assert!(error.contains("absent.pem"), "{error}");
}

#[test]
fn config_entries_are_validated() {
    let parse = |text: &str| Config::parse(text, Path::new("/etc/sealgate.toml"));
    let good = parse(
        "[[dkim]]\ndomain = \"example.org\"\nselector = \"sel1\"\n\
         algorithm = \"ed25519-sha256\"\nexpire_after = \"7d\"\n",
    )
    .unwrap();
    assert_eq!(good.dkim[0].algorithm, DkimAlgorithm::Ed25519Sha256);
    assert_eq!(
        good.dkim[0].key_file(),
        PathBuf::from("dkim/example.org.sel1.pem")
    );
    let cases = [
        (
            "[[dkim]]\ndomain = \"exa mple.org\"\nselector = \"s\"\n",
            "/etc/sealgate.toml: dkim[0].domain = \"exa mple.org\": expected a domain name",
        ),
        (
            "[[dkim]]\ndomain = \"example.org\"\nselector = \"a;b\"\n",
            "dkim[0].selector = \"a;b\"",
        ),
        (
            "[[dkim]]\ndomain = \"example.org\"\nselector = \"s\"\n\
             [[dkim]]\ndomain = \"Example.org\"\nselector = \"S\"\n",
            "dkim[1].selector = \"S\": this domain already has a key with this selector",
        ),
        (
            "[[dkim]]\ndomain = \"example.org\"\nselector = \"s\"\nalgorithm = \"rsa-sha1\"\n",
            "key dkim[0].algorithm",
        ),
    ];
    for (text, expected) in cases {
        let error = parse(text).err().unwrap().to_string();
        assert!(error.contains(expected), "{error}");
    }
}

#[test]
fn random_input_never_panics() {
    let keys = tempfile::tempdir().unwrap();
    let config = config_with_keys(
        keys.path(),
        &[("example.org", "sel1", DkimAlgorithm::Ed25519Sha256)],
    );
    let signer = MessageSigner::load(&config).unwrap();
    let pieces: [&[u8]; 9] = [
        b"From: ",
        b"a@example.org",
        b"\r\n",
        b"\n",
        b":",
        b"\r\n\t",
        b"=?utf-8?b?",
        b"\xff\xc3",
        b"<>,;\"",
    ];
    for _ in 0..2000 {
        let length = rand::random_range(0..40);
        let message: Vec<u8> = (0..length)
            .flat_map(|_| pieces[rand::random_range(0..pieces.len())].iter().copied())
            .collect();
        let signatures = signer.sign(&message).unwrap();
        if !signatures.signers.is_empty() {
            assert_eq!(signatures.signers, ["example.org/sel1"]);
        }
    }
}
