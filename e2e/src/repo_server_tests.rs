use super::*;

async fn server_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, RepoServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, bytes) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }
    let server = RepoServer::start(dir.path()).await.expect("server");
    (dir, server)
}

fn client() -> reqwest::Client {
    crate::install_crypto_provider();
    reqwest::Client::new()
}

#[tokio::test]
async fn serves_files_with_etag_and_answers_304_to_a_matching_if_none_match() {
    let (_dir, server) = server_with(&[("index.json", b"{\"releases\":[]}")]).await;
    let url = format!("{}/index.json", server.url());
    let first = client().get(&url).send().await.expect("get");
    assert_eq!(first.status(), 200);
    let etag = first.headers()[header::ETAG]
        .to_str()
        .expect("etag")
        .to_string();
    assert_eq!(
        first.bytes().await.expect("body").as_ref(),
        b"{\"releases\":[]}"
    );

    let again = client()
        .get(&url)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(again.status(), 304);

    std::fs::write(server.root().join("index.json"), b"{\"releases\":[1]}").expect("write");
    let changed = client()
        .get(&url)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(changed.status(), 200, "a rewritten file has a new ETag");
    assert_eq!(server.count("/index.json", 304), 1);
    assert_eq!(server.count("/index.json", 200), 2);
}

#[tokio::test]
async fn refuses_paths_outside_the_root_and_missing_files() {
    let (_dir, server) = server_with(&[("a.json", b"{}")]).await;
    for path in ["/../etc/passwd", "/missing.json", "/"] {
        let status = client()
            .get(format!("{}{path}", server.url()))
            .send()
            .await
            .expect("get")
            .status();
        assert_eq!(status, 404, "{path}");
    }
}

#[tokio::test]
async fn fault_switches_change_what_is_served() {
    let sig = b"QUJD\n";
    let module = [1u8, 2, 3, 4, 5, 6];
    let (_dir, server) = server_with(&[("index.json.sig", sig), ("modules/x.ko", &module)]).await;
    let get = |path: &'static str| {
        let url = format!("{}{path}", server.url());
        async move {
            let response = client().get(url).send().await.expect("get");
            (
                response.status().as_u16(),
                response.bytes().await.expect("body").to_vec(),
            )
        }
    };

    server.update_faults(|f| f.wrong_signature = true);
    let (status, body) = get("/index.json.sig").await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), sig.len());
    assert_ne!(body, sig);

    server.update_faults(|f| f.corrupt_modules = true);
    let (_, body) = get("/modules/x.ko").await;
    assert_eq!(body.len(), module.len());
    assert_ne!(body, module);

    server.update_faults(|f| f.unavailable = true);
    assert_eq!(get("/modules/x.ko").await.0, 503);

    server.set_faults(Faults::default());
    assert_eq!(get("/modules/x.ko").await, (200, module.to_vec()));
}

#[tokio::test]
async fn refused_connections_come_back_on_the_same_port() {
    let (_dir, mut server) = server_with(&[("index.json", b"{}")]).await;
    let url = format!("{}/index.json", server.url());
    server.refuse_connections();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    assert!(
        fresh.get(&url).send().await.is_err(),
        "connection should be refused"
    );

    server.accept_connections().await.expect("listen again");
    assert_eq!(fresh.get(&url).send().await.expect("get").status(), 200);
}

#[tokio::test]
async fn delay_slows_every_answer() {
    let (_dir, server) = server_with(&[("index.json", b"{}")]).await;
    server.update_faults(|f| f.delay = Duration::from_millis(400));
    let start = std::time::Instant::now();
    let status = client()
        .get(format!("{}/index.json", server.url()))
        .send()
        .await
        .expect("get")
        .status();
    assert_eq!(status, 200);
    assert!(start.elapsed() >= Duration::from_millis(400));
}
