//! Test certificates made with openssl: a CA and leaves it signs.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::{path::Path, process::Command};

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>-ca.crt`) and, signed by it, `<leaf>.crt`/`<leaf>.key` for
/// each leaf (valid for 127.0.0.1 and localhost).
pub fn pki(dir: &Path, name: &str, leaves: &[&str]) {
    pki_for(dir, name, leaves, "IP:127.0.0.1,DNS:localhost");
}

/// [`pki`] with the leaves valid for `names` (a subjectAltName value).
pub fn pki_for(dir: &Path, name: &str, leaves: &[&str], names: &str) {
    let ca_key = format!("{name}-ca.key");
    let ca_crt = format!("{name}-ca.crt");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca_crt,
            "-days",
            "2",
            "-subj",
            &format!("/CN=tether test {name} CA"),
        ],
    );
    std::fs::write(
        dir.join("leaf.ext"),
        format!("subjectAltName={names}\nextendedKeyUsage=serverAuth,clientAuth\n"),
    )
    .unwrap();
    for leaf in leaves {
        let (key, csr, crt) = (
            format!("{leaf}.key"),
            format!("{leaf}.csr"),
            format!("{leaf}.crt"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={leaf}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
            ],
        );
    }
}
