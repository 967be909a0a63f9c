//! The curation workbench as a reviewer uses it: the review server over
//! HTTP (decisions written at once, a SIGKILL losing nothing, a restart
//! resuming), the decisions applied by `select --labels` and stated on the
//! card, reviewers' files merged, near-duplicates grouped and dropped. The
//! browser test drives the page in headless Chromium (`.ci/run` installs
//! it): `cargo test --test it review_in_a_browser -- --ignored`.

use crate::fixture::{ok, stderr, stdout, Fixture};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

/// The fixture built: three hard images (labels 5, 9 and 11).
fn built() -> (Fixture, PathBuf) {
    let fx = Fixture::new();
    fx.fill_cache();
    let m = fx.write_manifest(imagenet_hard::demo::DEMO_COMMIT);
    ok(&fx.run(&["build", m.to_str().unwrap(), "--device", "cpu"], &[]));
    (fx, m)
}

/// A running `review` server and its URL.
struct Server {
    child: Child,
    base: String,
    token: String,
}

impl Server {
    /// `review MANIFEST`, or the demo's review without one.
    fn start(fx: &Fixture, manifest: Option<&Path>, extra: &[&str]) -> Server {
        let mut args = vec!["review"];
        args.extend(manifest.map(|m| m.to_str().unwrap()));
        args.extend(["--reviewer", "alice"]);
        args.extend_from_slice(extra);
        let mut cmd = fx.command(&args, &[]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url:?}");
        let (base, token) = url.split_once("/?token=").unwrap();
        Server {
            child,
            base: base.to_string(),
            token: token.to_string(),
        }
    }

    fn url(&self) -> String {
        format!("{}/?token={}", self.base, self.token)
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut r = ureq::get(format!("{}{path}{sep}token={}", self.base, self.token))
            .call()
            .unwrap();
        r.body_mut().read_json().unwrap()
    }

    fn decide(&self, body: serde_json::Value) -> u16 {
        ureq::post(format!("{}/api/decide?token={}", self.base, self.token))
            .config()
            .http_status_as_error(false)
            .build()
            .send(body.to_string())
            .unwrap()
            .status()
            .as_u16()
    }

    /// SIGKILL: no chance to flush anything.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn csv(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn decisions_survive_a_killed_server_and_select_applies_them() {
    let (fx, m) = built();
    let review = fx.path().join("run/review/review.csv");
    let server = Server::start(&fx, Some(&m), &[]);
    // The token is required, and only loopback is listened on.
    let denied = ureq::get(format!("{}/api/items", server.base))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    let items = server.get("/api/items");
    let labels: Vec<i64> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| it["labels"][0]["index"].as_i64().unwrap())
        .collect();
    assert_eq!(labels, [5, 9, 11]);
    assert!(items["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d.is_null()));
    // What the models said: always-3 answers 3 under all 18 transforms.
    let said = server.get("/api/models?i=0");
    assert_eq!(said["models"][0]["answers"][0][0]["index"], 3);
    assert_eq!(said["models"][0]["answers"][0][1], 18);
    // The image and a zoom view are served.
    let image = ureq::get(format!(
        "{}/api/image?i=0&token={}",
        server.base, server.token
    ))
    .call()
    .unwrap();
    assert!(image.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("image/"));
    // A view of the run's grid is served; one outside it is a 400 that
    // names the grid.
    let inside = said["transforms"][0].as_str().unwrap().to_string();
    for (t, want) in [
        (inside.as_str(), 200),
        ("r9c9s256", 400),
        ("r1c1s0", 400),
        ("r1c1s100000", 400),
    ] {
        for route in ["view?i=0", "top5?i=0&m=nope"] {
            let mut r = ureq::get(format!(
                "{}/api/{route}&t={t}&token={}",
                server.base, server.token
            ))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
            let status = r.status().as_u16();
            let body = String::from_utf8_lossy(&r.body_mut().read_to_vec().unwrap()).into_owned();
            if want == 400 {
                assert_eq!(status, 400, "{route} {t}");
                assert!(body.contains("not a view of this run"), "{body}");
            } else if route.starts_with("view") {
                assert_eq!(status, 200, "{route} {t}: {body}");
            }
        }
    }

    assert_eq!(
        server.decide(serde_json::json!({"i": 0, "decision": "keep"})),
        200
    );
    assert_eq!(
        server.decide(
            serde_json::json!({"i": 1, "decision": "drop", "comment": "not a photo, \"clearly\""})
        ),
        200
    );
    assert_eq!(
        server.decide(serde_json::json!({"i": 2, "decision": "relabel", "labels": [1200]})),
        400
    );
    // Killed mid-review: both decisions are on disk already.
    server.kill();
    let rows = csv(&review);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[1], "tiny-source,2,5,keep,,alice");
    assert!(
        rows[2].starts_with("tiny-source,4,,drop,\"not a photo"),
        "{rows:?}"
    );

    // A restart resumes: the two decisions are there, the third is next.
    let server = Server::start(&fx, Some(&m), &[]);
    let items = server.get("/api/items");
    let decided: Vec<bool> = items["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| !d.is_null())
        .collect();
    assert_eq!(decided, [true, true, false]);
    assert_eq!(
        server.decide(serde_json::json!({"i": 2, "decision": "relabel", "labels": [1, 0]})),
        200
    );
    server.kill();

    // `select --labels` applies the review; the card says so.
    let mstr = m.to_str().unwrap();
    select_with_review(&fx, mstr, &review);
    ok(&fx.run(&["export", mstr], &[]));
    let card = std::fs::read_to_string(fx.path().join("run/dataset/README.md")).unwrap();
    assert!(
        card.contains("review.csv") && card.contains("1 images relabelled, 1 dropped"),
        "{card}"
    );
}

#[test]
fn reviewers_files_merge_with_their_conflicts_reported() {
    let fx = Fixture::new();
    let a = fx.path().join("alice.csv");
    let b = fx.path().join("bob.csv");
    std::fs::write(
        &a,
        "origin,row,labels,decision,comment,reviewer\ns,1,3,keep,,alice\ns,2,,drop,blurry,alice\n",
    )
    .unwrap();
    std::fs::write(&b, "origin,row,labels,decision,comment,reviewer\ns,1,3,keep,,bob\ns,2,9,keep,,bob\ns,3,4,relabel,,bob\n").unwrap();
    let merged = fx.path().join("merged.csv");
    let out = fx.run(
        &[
            "review",
            "--merge",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--output",
            merged.to_str().unwrap(),
        ],
        &[],
    );
    ok(&out);
    assert!(
        stdout(&out).contains("s\t2\t")
            && stdout(&out).contains("drop")
            && stdout(&out).contains("keep [9]"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("3 image(s), 1 conflict(s)"),
        "{}",
        stderr(&out)
    );
    let rows = csv(&merged);
    assert_eq!(rows[1], "s,1,3,keep,,alice bob");
    assert!(rows[2].starts_with("s,2,9,flag,conflict:"), "{rows:?}");
    assert_eq!(rows[3], "s,3,4,relabel,,bob");
}

#[test]
fn near_duplicates_are_grouped_shown_and_dropped_by_keep_first() {
    let (fx, m) = built();
    let mstr = m.to_str().unwrap();
    // Every scanned image of the fixture, compared: its pictures are drawn
    // from a few patterns, so some are near-duplicates of each other.
    let out = fx.run(&["dedupe", mstr, "--all", "--max-distance", "64"], &[]);
    ok(&out);
    let dups: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.path().join("run/select/duplicates.json")).unwrap(),
    )
    .unwrap();
    // At distance 64 everything is one group: 7 decodable images.
    assert_eq!(dups["groups"].as_array().unwrap().len(), 1, "{dups}");
    assert_eq!(dups["groups"][0].as_array().unwrap().len(), 7);
    // Under keep-all, select keeps the three hard images.
    ok(&fx.run(&["select", mstr], &[]));
    let sel = |fx: &Fixture| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(fx.path().join("run/select/selection.json")).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(sel(&fx)["hard"].as_array().unwrap().len(), 3);
    // The review page shows the group.
    let server = Server::start(&fx, Some(&m), &[]);
    let items = server.get("/api/items");
    assert!(items["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|it| it["group"] == 0));
    server.kill();
    // Under keep-first, only the first copy (row 0, not hard) is kept: the
    // three hard images are later copies and leave the hard set.
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(
        &m,
        format!("{text}\n[selection]\nduplicates = \"keep-first\"\n"),
    )
    .unwrap();
    // The plan records the policy: make it again (same inputs, same units).
    ok(&fx.run(&["plan", mstr], &[]));
    ok(&fx.run(&["select", mstr], &[]));
    let s = sel(&fx);
    assert_eq!(s["hard"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(s["duplicates_dropped"], 3);
}

/// A WebDriver session on headless Chromium (chromedriver speaks the W3C
/// protocol: JSON over HTTP).
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver not found: apt-get install chromium chromium-driver");
        let base = format!("http://127.0.0.1:{port}");
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000"]}}}});
        let mut session = None;
        for _ in 0..100 {
            if let Ok(mut r) = ureq::post(format!("{base}/session")).send(caps.to_string()) {
                let v: serde_json::Value = r.body_mut().read_json().unwrap();
                session = v["value"]["sessionId"].as_str().map(String::from);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Browser {
            driver,
            base,
            session: session.expect("no WebDriver session"),
        }
    }

    fn call(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut r = match method {
            "GET" => agent.get(&url).call().unwrap(),
            _ => agent.post(&url).send(body.to_string()).unwrap(),
        };
        let v: serde_json::Value = r.body_mut().read_json().unwrap();
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", serde_json::json!({"url": url}));
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            serde_json::json!({"using": "css selector", "value": css}),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|id| id.as_str())
            .map(String::from)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
    }

    fn text(&self, css: &str) -> String {
        let id = self.element(css);
        self.call(
            "GET",
            &format!("/element/{id}/text"),
            serde_json::Value::Null,
        )
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    fn keys(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            serde_json::json!({"text": text}),
        );
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &format!("/element/{id}/click"),
            serde_json::json!({}),
        );
    }

    /// Wait until `css`'s text contains `want`.
    fn wait_text(&self, css: &str, want: &str) -> String {
        let mut last = String::new();
        for _ in 0..200 {
            last = self.text(css);
            if last.contains(want) {
                return last;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("`{css}` never showed `{want}`; last: {last:?}");
    }

    fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let png = self.call("GET", "/screenshot", serde_json::Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = ureq::delete(&url).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A short review in a real browser: keep with the mouse, drop and relabel
/// (searching a class name) with the keyboard, the server killed and
/// restarted half-way; then the CSV and a re-selection are checked.
/// `REVIEW_SCREENSHOT=path.png` also saves a picture of the page.
#[test]
#[ignore = "needs Chromium and chromedriver (apt-get install chromium chromium-driver)"]
fn review_in_a_browser() {
    let (fx, m) = built();
    let review = fx.path().join("run/review/review.csv");
    let browser = Browser::start();
    let server = Server::start(&fx, Some(&m), &[]);
    browser.go(&server.url());
    browser.wait_text("#progress", "0 / 3 reviewed");
    browser.wait_text("#labels", "5 electric ray");
    browser.wait_text("#models", "always-3");
    if let Ok(path) = std::env::var("REVIEW_SCREENSHOT") {
        browser.screenshot(Path::new(&path));
    }
    browser.click("#b-keep");
    browser.wait_text("#progress", "1 / 3 reviewed");
    browser.wait_text("#labels", "9 ostrich");
    browser.keys("body", "d");
    browser.wait_text("#progress", "2 / 3 reviewed");
    // Killed mid-review; a new server, a reload: the page resumes on the third.
    server.kill();
    assert_eq!(csv(&review).len(), 3);
    let server = Server::start(&fx, Some(&m), &[]);
    browser.go(&server.url());
    browser.wait_text("#progress", "2 / 3 reviewed");
    browser.wait_text("#labels", "11 goldfinch");
    browser.keys("body", "r");
    browser.keys("#relabel-input", "goldfish");
    browser.wait_text("#relabel-list", "1 goldfish");
    browser.keys("#relabel-input", "\u{E007}"); // Enter
    browser.wait_text("#progress", "3 / 3 reviewed");
    server.kill();
    let rows = csv(&review);
    assert_eq!(
        rows,
        [
            "origin,row,labels,decision,comment,reviewer",
            "tiny-source,2,5,keep,,alice",
            "tiny-source,4,,drop,,alice",
            "tiny-source,5,1,relabel,,alice",
        ]
    );
    let mstr = m.to_str().unwrap();
    select_with_review(&fx, mstr, &review);
    let sel: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.path().join("run/select/selection.json")).unwrap(),
    )
    .unwrap();
    // Row 4 is dropped; row 5 is now a goldfish, which neither model answers.
    let hard: Vec<(u64, i64)> = sel["hard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["row"].as_u64().unwrap(), h["labels"][0].as_i64().unwrap()))
        .collect();
    assert_eq!(hard, [(2, 5), (5, 1)]);
}

/// `select --labels REVIEW`, which here relabels one image and drops one.
fn select_with_review(fx: &Fixture, manifest: &str, review: &Path) {
    let out = fx.run(
        &["select", manifest, "--labels", review.to_str().unwrap()],
        &[],
    );
    ok(&out);
    assert!(
        stderr(&out).contains("1 images relabelled, 1 dropped"),
        "{}",
        stderr(&out)
    );
}

/// The demo's planted labelling slips lead the page's "most suspect first"
/// order, and `s` takes the suggested class.
#[test]
#[ignore = "needs Chromium and chromedriver (apt-get install chromium chromium-driver)"]
fn review_puts_the_most_suspect_first_in_a_browser() {
    let fx = Fixture::new();
    ok(&fx.run(&["build"], &[]));
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.path().join("output/demo/report/report.json")).unwrap(),
    )
    .unwrap();
    let top = &report["hard"]["suspects"][0];
    let (id, class) = (top["id"].as_str().unwrap(), top["class"].as_i64().unwrap());
    let total = report["hard"]["total"].as_u64().unwrap();
    // The report's first suspect is one of the planted slips.
    let slips = imagenet_hard::demo::planted_slips();
    assert!(
        slips.iter().any(|(r, _)| Some(*r) == top["row"].as_u64()),
        "{top}"
    );
    let browser = Browser::start();
    let server = Server::start(&fx, None, &[]);
    browser.go(&server.url());
    browser.wait_text("#progress", &format!("0 / {total} reviewed"));
    browser.keys("#f-order", "most");
    browser.wait_text("#item-pos", &format!("1 of {total}"));
    browser.wait_text("#item-id", id);
    browser.wait_text("#suspect", top["name"].as_str().unwrap());
    if let Ok(path) = std::env::var("REVIEW_SCREENSHOT") {
        browser.screenshot(Path::new(&path));
    }
    browser.keys("body", "s");
    browser.wait_text("#progress", &format!("1 / {total} reviewed"));
    server.kill();
    let rows = csv(&fx.path().join("output/demo/review/review.csv"));
    let row = top["row"].as_u64().unwrap();
    assert_eq!(
        rows[1],
        format!("synthetic-demo,{row},{class},relabel,,alice"),
        "{rows:?}"
    );
}
