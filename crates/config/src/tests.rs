use super::*;

#[test]
fn empty_file_gives_defaults() {
    let c = Config::parse("", "t.toml").unwrap();
    assert_eq!(c.hosts(), ["localhost"]);
    assert!(c.listen.c2s.is_empty());
    assert_eq!(c.storage.parsed().unwrap(), StorageUrl::Sqlite("data/meerkat.db".into()));
    assert!(c.modules.mod_ping.is_none());
}

#[test]
fn builtin_default_has_two_listeners_and_modules() {
    let c = Config::default();
    assert_eq!(c.listen.c2s.len(), 2);
    assert_eq!(c.listen.c2s[1].tls.mode, TlsMode::Tls);
    assert!(c.modules.mod_offline.is_some());
    assert!(c.modules.mod_register.is_none());
}

#[test]
fn unknown_key_names_key_and_line() {
    let src = "[general]\nhosts = [\"a.example\"]\n\n[[listen.c2s]]\nport = 5222\nprot = 1\n";
    let e = Config::parse(src, "m.toml").unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].line, 6);
    let msg = e.to_string();
    assert!(msg.contains("prot"), "{msg}");
    assert!(msg.starts_with("m.toml: line 6"), "{msg}");
}

#[test]
fn unknown_module_is_an_error() {
    let e = Config::parse("[modules.mod_nonsense]\n", "m.toml").unwrap_err();
    assert!(e.to_string().contains("mod_nonsense"), "{e}");
    assert_eq!(e.errors[0].line, 1);
}

#[test]
fn semantic_errors_are_all_reported_with_lines() {
    let src = "[general]\nhosts = [\"Bad Host\"]\n[[listen.c2s]]\nport = 5222\n[[listen.c2s]]\nport = 5222\nshaper = \"nope\"\n[storage]\nurl = \"mysql://x\"\n";
    let e = Config::parse(src, "m.toml").unwrap_err();
    let lines: Vec<usize> = e.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 6, 7, 9], "{e}");
    assert!(e.errors[1].key.as_deref() == Some("listen.c2s[1].port"));
}

#[test]
fn worker_threads_is_optional_and_bounded() {
    assert!(Config::parse("[general]\n", "m").unwrap().general.worker_threads.is_none());
    let c = Config::parse("[general]\nworker_threads = 3\n", "m").unwrap();
    assert_eq!(c.general.worker_threads.map(|n| n.into_inner()), Some(3));
    let e = Config::parse("[general]\nhosts = [\"x\"]\nworker_threads = 0\n", "m").unwrap_err();
    assert_eq!((e.errors[0].line, e.errors[0].key.as_deref()), (3, Some("general.worker_threads")), "{e}");
    let e = Config::parse("[general]\nworker_threads = 40000\n", "m").unwrap_err();
    assert!(e.to_string().contains("between 1 and 1024"), "{e}");
}

#[test]
fn http_listener_tls_has_no_mode_and_needs_both_files() {
    let base = "[[listen.http]]\nport = 5280\n";
    let e = Config::parse(&format!("{base}tls.mode = \"tls\"\n"), "m").unwrap_err();
    assert_eq!(e.errors[0].line, 3, "{e}");
    assert!(e.to_string().contains("mode"), "{e}");
    let e = Config::parse(&format!("{base}tls.certfile = \"c.pem\"\n"), "m").unwrap_err();
    assert!(e.to_string().contains("keyfile"), "{e}");
    let c = Config::parse(&format!("{base}tls.certfile = \"c.pem\"\ntls.keyfile = \"k.pem\"\n"), "m").unwrap();
    assert_eq!(c.listen.http[0].tls.as_ref().unwrap().keyfile.get_ref(), "k.pem");
}

#[test]
fn tls_mode_values() {
    let c = Config::parse("[[listen.c2s]]\nport = 5223\ntls.mode = \"tls\"\n", "m").unwrap();
    assert_eq!(c.listen.c2s[0].tls.mode, TlsMode::Tls);
    let e = Config::parse("[[listen.c2s]]\nport = 5223\ntls.mode = \"ssl\"\n", "m").unwrap_err();
    assert_eq!(e.errors[0].line, 3);
}

#[test]
fn example_config_is_valid_and_enables_every_module() {
    let c = Config::parse(EXAMPLE, "meerkat.example.toml").unwrap();
    let m = &c.modules;
    assert!(m.mod_roster.is_some() && m.mod_disco.is_some() && m.mod_ping.is_some());
    assert!(m.mod_version.is_some() && m.mod_time.is_some() && m.mod_last.is_some());
    assert!(m.mod_vcard.is_some() && m.mod_private.is_some() && m.mod_blocking.is_some());
    assert!(m.mod_offline.is_some() && m.mod_register.is_some() && m.mod_stanza_id.is_some());
    assert!(m.mod_carboncopy.is_some() && m.mod_csi.is_some() && m.mod_stream_management.is_some());
    assert!(m.mod_mam.is_some());
    assert_eq!(c.listen.c2s.len(), 2);
}

#[test]
fn mam_options_are_checked() {
    let c = Config::parse(
        "[modules.mod_mam]
",
        "m.toml",
    )
    .unwrap();
    let m = c.modules.mod_mam.expect("enabled by its table");
    assert_eq!((m.default_mode.as_str(), m.max_result_limit, m.default_result_limit), ("always", 50, 50));
    assert_eq!((m.async_writer.batch_size, m.async_writer.flush_interval), (3000, 2000));
    assert_eq!(m.async_writer.max_queue, 100_000);
    let c = Config::parse(
        "[modules.mod_mam.async_writer]
batch_size = 100
max_queue = 500
",
        "m.toml",
    )
    .unwrap();
    assert_eq!(c.modules.mod_mam.expect("enabled").async_writer.max_queue, 500);
    // The bound must hold at least one batch.
    let e = Config::parse(
        "[modules.mod_mam.async_writer]
batch_size = 50
max_queue = 10
",
        "m.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("modules.mod_mam.async_writer.max_queue"), "{e}");
    assert!(e.to_string().contains("is 10 but must be at least batch_size (50"), "{e}");
    let e = Config::parse(
        "[modules.mod_mam.async_writer]
batch_size = 5
pool_size = 2
",
        "m.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("pool_size") && e.errors[0].line == 3, "{e}");
    let src = "[modules.mod_mam]
default_mode = \"sometimes\"
default_result_limit = 100
";
    let e = Config::parse(src, "m.toml").unwrap_err();
    assert_eq!(e.errors.len(), 2, "{e}");
    assert!(e.to_string().contains("default_mode") && e.to_string().contains("default_result_limit"), "{e}");
}

#[test]
fn cluster_section() {
    let pg = "[storage]\nurl = \"postgres://u@h/db\"\n";
    // Absent: a single node.
    assert!(Config::parse("", "m.toml").unwrap().cluster.is_none());
    // One URL or a list; defaults for the rest.
    let c =
        Config::parse(&format!("{pg}[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\nnode_name = \"n1\"\n"), "m.toml")
            .unwrap()
            .cluster
            .unwrap();
    assert_eq!(c.nats_url.get_ref().list(), ["nats://127.0.0.1:4222"]);
    assert_eq!((c.name.get_ref().as_str(), c.heartbeat_interval_ms, c.node_timeout_ms), ("meerkat", 1000, 3000));
    let c = Config::parse(
        &format!("{pg}[cluster]\nnats_url = [\"nats://a:4222\", \"tls://b:4222\"]\nnode_name = \"eu-1\"\n"),
        "m.toml",
    )
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(c.nats_url.get_ref().list().len(), 2);
    // Unknown keys name the key and line; bad values are all reported.
    let e =
        Config::parse(&format!("{pg}[cluster]\nnats_url = \"nats://a\"\nnode_name = \"n1\"\nnodes = 3\n"), "m.toml")
            .unwrap_err();
    assert!(e.to_string().contains("nodes") && e.errors[0].line == 6, "{e}");
    let e = Config::parse(
        "[cluster]\nnats_url = \"http://a\"\nnode_name = \"n 1\"\nheartbeat_interval_ms = 1000\nnode_timeout_ms = 1500\n",
        "m.toml",
    )
    .unwrap_err();
    let keys: Vec<_> = e.errors.iter().filter_map(|e| e.key.as_deref()).collect();
    for k in ["cluster.nats_url", "cluster.node_name", "cluster.node_timeout_ms", "storage.url"] {
        assert!(keys.contains(&k), "{k} missing in {e}");
    }
    assert!(e.to_string().contains("PostgreSQL"), "a cluster shares PostgreSQL: {e}");
}

#[test]
fn group_chat_sections() {
    // Defaults, with MongooseIM's option names.
    let c = Config::parse("[modules.mod_muc]\n[modules.mod_muc_light]\n", "m.toml").unwrap();
    let muc = c.modules.mod_muc.as_ref().unwrap();
    assert_eq!((muc.host.as_str(), muc.max_users, muc.history_length), ("conference.@HOST@", 200, 20));
    let light = c.modules.mod_muc_light.as_ref().unwrap();
    assert_eq!(light.host, "muclight.@HOST@");
    assert_eq!(light.config_schema.iter().map(|f| f.field.as_str()).collect::<Vec<_>>(), ["roomname", "subject"]);
    // A key a room default does not have names itself.
    let e = Config::parse("[modules.mod_muc.default_room]\npersistant = true\n", "m.toml").unwrap_err();
    assert!(e.to_string().contains("persistant"), "{e}");
    // Every bad value is reported with its key.
    let e = Config::parse(
        "[modules.mod_muc]\nhost = \"conference\"\nmax_users = 0\n\
         [modules.mod_muc_light]\nhost = \"conference\"\nmax_occupants = 1\n\
         config_schema = [{ field = \"version\" }, { field = \"a\" }, { field = \"a\" }]\n",
        "m.toml",
    )
    .unwrap_err();
    let keys: Vec<_> = e.errors.iter().filter_map(|e| e.key.as_deref()).collect();
    for k in [
        "modules.mod_muc.host",
        "modules.mod_muc.max_users",
        "modules.mod_muc_light.host",
        "modules.mod_muc_light.max_occupants",
        "modules.mod_muc_light.config_schema",
    ] {
        assert!(keys.contains(&k), "{k} not in {keys:?}");
    }
    assert_eq!(keys.iter().filter(|k| **k == "modules.mod_muc_light.config_schema").count(), 2, "{e}");
}
