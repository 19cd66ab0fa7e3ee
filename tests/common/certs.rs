//! Certificates made with openssl: a CA, and server and client certificates.

use super::*;

/// A test CA, etcd's server certificate (for 127.0.0.1 and this process's [`own_ip`]) and a
/// client certificate, in `dir`.
pub(crate) fn make_certs(dir: &Path) {
    make_ca(dir);
    // etcd's own gateway connects to itself with the server certificate: it needs clientAuth.
    let sans = format!("IP:127.0.0.1,IP:{},DNS:localhost", own_ip());
    let sans = sans.as_str();
    make_cert(dir, "server", "server", sans, "serverAuth,clientAuth");
    make_cert(dir, "client", "client", sans, "clientAuth");
}

/// Runs `openssl ARGS` in `dir`; fails the test with openssl's words if it fails.
pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    require("openssl");
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A test CA in `dir`: `ca.crt` and `ca.key`, valid for two days.
pub fn make_ca(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &EC_KEY,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=tidecast test CA",
            ],
        ]
        .concat(),
    );
}

/// `NAME.crt` and `NAME.key` in `dir`, signed by the CA there ([`make_ca`]), with common name
/// `cn`, subject alternative names `sans` (`IP:127.0.0.1,DNS:localhost`) and extended key usage
/// `usage`.
pub fn make_cert(dir: &Path, name: &str, cn: &str, sans: &str, usage: &str) {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName={sans}\nextendedKeyUsage={usage}\n"),
    )
    .unwrap();
    let (k, csr, crt, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &EC_KEY,
            &["-keyout", &k, "-out", &csr, "-subj", &format!("/CN={cn}")],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}
