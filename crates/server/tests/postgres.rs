//! The server end to end on PostgreSQL (127.0.0.1:5432/test, or
//! MEERKAT_TEST_PG_URL), and what a client sees when storage fails.

use std::time::Duration;

use meerkat::testing::{test_config, RawClient, TestServer};
use meerkat_config::TlsMode;
use meerkat_stanza::ns;

fn pg_url() -> String {
    std::env::var("MEERKAT_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn pg_server(schema: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let stores = meerkat_storage_postgres::open_with_schema(&pg_url(), schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {}: {e}", pg_url()));
    TestServer::start_with_stores(cfg, stores, Some(dir)).await.unwrap()
}

async fn drop_schema(schema: &str) {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
}

#[tokio::test]
async fn messaging_offline_and_roster_on_postgres_then_storage_failure() {
    let schema = format!("meerkat_srv_{}", meerkat_storage::conformance::unique_tag());
    let s = pg_server(&schema).await;
    s.add_user("alice@localhost", "alice-pass").await;
    s.add_user("bob@localhost", "bob-pass").await;
    let mut a = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    a.login_plain("alice", "alice-pass", "a").await;
    a.send("<presence/>").await;
    a.send("<message to='bob@localhost' type='chat' id='pg1'><body>stored in postgres</body></message>").await;
    a.send("<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='B'/></query></iq>")
        .await;
    a.expect_where(|e| e.attr("id") == Some("r")).await;
    let mut b = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    b.login_plain("bob", "bob-pass", "b").await;
    b.send("<presence/>").await;
    let m = b.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("stored in postgres"));
    assert!(m.has_child("delay", ns::DELAY));

    // Storage disappears under a running server: requests that need it get
    // internal-server-error (type wait); sessions and routing keep working.
    drop_schema(&schema).await;
    a.send("<iq type='get' id='vc'><vCard xmlns='vcard-temp'/></iq>").await;
    let r = a.expect_where(|e| e.attr("id") == Some("vc")).await;
    let err = r.get_child("error", ns::CLIENT).unwrap_or_else(|| panic!("expected an error: {r}"));
    assert_eq!(err.attr("type"), Some("wait"));
    assert!(err.has_child("internal-server-error", ns::STANZAS), "{r}");
    a.send("<message to='bob@localhost/b' type='chat' id='live'><body>still routed</body></message>").await;
    let m = b.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.attr("id"), Some("live"));
    // A login that needs credentials gets temporary-auth-failure.
    let mut c = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    c.open().await;
    c.expect().await;
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAGFsaWNlLXBhc3M=</auth>").await;
    let f = c.next(Duration::from_secs(5)).await.expect("an answer");
    assert!(f.has_child("temporary-auth-failure", ns::SASL), "{f}");
    s.stop().await;
}
