//! The `meerkat` binary's administration commands, run as a user would.

use std::process::Command;

fn meerkat(cfg: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_meerkat")).arg("--config").arg(cfg).args(args).output().expect("run meerkat");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("meerkat.toml");
    std::fs::write(
        &path,
        format!(
            "[general]\nhosts = [\"localhost\", \"example.org\"]\ndata_dir = \"{d}\"\n[storage]\nurl = \"sqlite://{d}/m.db\"\n[auth]\nscram_iterations = 4096\n",
            d = dir.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn user_commands_work_on_the_configured_storage() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    assert!(meerkat(&cfg, &["user", "add", "alice@localhost", "s3cret-pass"]).0);
    let (ok, _, err) = meerkat(&cfg, &["user", "add", "alice@localhost", "again"]);
    assert!(!ok && err.contains("already exists"), "{err}");
    assert!(meerkat(&cfg, &["user", "add", "bob@localhost", "pw-bob-123"]).0);
    assert!(meerkat(&cfg, &["user", "add", "carol@example.org", "pw-carol-1"]).0);
    let (ok, out, _) = meerkat(&cfg, &["user", "list", "localhost"]);
    assert!(ok);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["alice@localhost", "bob@localhost"]);
    assert!(meerkat(&cfg, &["user", "check", "alice@localhost", "s3cret-pass"]).0);
    let (ok, _, err) = meerkat(&cfg, &["user", "check", "alice@localhost", "wrong"]);
    assert!(!ok && err.contains("wrong password"), "{err}");
    assert!(meerkat(&cfg, &["user", "passwd", "alice@localhost", "new-pass-42"]).0);
    assert!(!meerkat(&cfg, &["user", "check", "alice@localhost", "s3cret-pass"]).0);
    assert!(meerkat(&cfg, &["user", "check", "alice@localhost", "new-pass-42"]).0);
    assert!(meerkat(&cfg, &["user", "del", "bob@localhost"]).0);
    let (ok, _, err) = meerkat(&cfg, &["user", "del", "bob@localhost"]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    let (ok, _, err) = meerkat(&cfg, &["user", "add", "x@elsewhere.net", "pw"]);
    assert!(!ok && err.contains("not served"), "{err}");
    let (ok, _, err) = meerkat(&cfg, &["user", "add", "not a jid@@", "pw"]);
    assert!(!ok, "{err}");
    let (ok, out, _) =
        meerkat(&cfg, &["user", "bulk-add", "--count", "3", "--domain", "example.org", "--password", "load"]);
    assert!(ok && out.contains("created 3"), "{out}");
    assert!(meerkat(&cfg, &["user", "check", "user2@example.org", "load"]).0);
    // The database holds SCRAM keys, not the password.
    let db = std::fs::read(dir.path().join("m.db")).unwrap();
    assert!(!db.windows(b"new-pass-42".len()).any(|w| w == b"new-pass-42"));
}

#[test]
fn config_check_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path());
    let (ok, out, _) = meerkat(&good, &["config", "check"]);
    assert!(ok, "{out}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[general]\nhosts = [\"localhost\"]\n\n[[listen.c2s]]\nport = 5222\ntls.mod = \"starttls\"\n")
        .unwrap();
    let (ok, _, err) = meerkat(&bad, &["config", "check"]);
    assert!(!ok);
    assert!(err.contains("line 6") && err.contains("mod"), "{err}");
    std::fs::write(&bad, "[[listen.c2s]]\nport = 5222\n[[listen.c2s]]\nport = 5222\n[storage]\nurl = \"mysql://x\"\n")
        .unwrap();
    let (ok, _, err) = meerkat(&bad, &["config", "check"]);
    assert!(!ok);
    assert!(err.contains("line 4") && err.contains("listen.c2s[1].port"), "{err}");
    assert!(err.contains("line 6") && err.contains("storage.url"), "{err}");
}

#[test]
fn config_example_is_the_shipped_file_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, _) = meerkat(&config(dir.path()), &["config", "example"]);
    assert!(ok);
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../meerkat.example.toml")).unwrap();
    assert_eq!(out, shipped);
    let path = dir.path().join("example.toml");
    std::fs::write(&path, out).unwrap();
    assert!(meerkat(&path, &["config", "check"]).0);
}
