//! `turboquant serve` over real HTTP on loopback, and its page in headless Chromium.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::smollm2;
use serde_json::Value;

/// The server, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("turboquant"))
        .args(["serve", "--port", "0", "-m"])
        .arg(smollm2())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .last()
        .expect("the address is printed")
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    Server { child, url }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn generate(url: &str, body: &str) -> (u16, String) {
    let mut response = agent()
        .post(&format!("{url}/api/generate"))
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

fn events(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn text_of(events: &[Value], side: &str) -> String {
    events
        .iter()
        .filter(|e| e["event"] == "token" && e["side"] == side)
        .map(|e| e["text"].as_str().unwrap())
        .collect()
}

#[test]
fn api_streams_both_sides_serves_requests_at_once_and_rejects_bad_ones() {
    let server = start();
    let url = &server.url;

    let mut info = agent().get(&format!("{url}/api/info")).call().unwrap();
    let info: Value = serde_json::from_str(&info.body_mut().read_to_string().unwrap()).unwrap();
    assert!(info["cache_types"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "turbo3"));

    let page = agent()
        .get(&format!("{url}/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(page.contains("id=\"generate\""));

    // two requests at once, with different compressed caches: each gets its own answer
    let bodies = [
        r#"{"prompt":"The capital of France is","cache":"turbo3","n_predict":10}"#,
        r#"{"prompt":"Water boils at","cache":"q8_0:turbo2","n_predict":10}"#,
    ];
    let handles: Vec<_> = bodies
        .iter()
        .map(|b| {
            let (url, b) = (url.clone(), b.to_string());
            std::thread::spawn(move || generate(&url, &b))
        })
        .collect();
    let results: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for ((status, body), (cache, topic)) in results
        .iter()
        .zip([("turbo3", "Paris"), ("q8_0:turbo2", "")])
    {
        assert_eq!(*status, 200, "{body}");
        let ev = events(body);
        assert_eq!(ev.last().unwrap()["event"], "end");
        let starts: Vec<&Value> = ev.iter().filter(|e| e["event"] == "start").collect();
        assert_eq!(starts.len(), 2);
        let compressed = starts.iter().find(|e| e["side"] == "compressed").unwrap();
        assert_eq!(
            compressed["cache"], cache,
            "a response carries its own request's cache"
        );
        assert!(compressed["compression"].as_f64().unwrap() > 1.5);
        assert!(compressed["kv_mib"].as_f64().unwrap() > 0.0);
        assert_eq!(
            ev.iter().filter(|e| e["event"] == "done").count(),
            2,
            "{body}"
        );
        assert!(!text_of(&ev, "f16").is_empty() && !text_of(&ev, "compressed").is_empty());
        assert!(
            text_of(&ev, "f16").contains(topic),
            "{}",
            text_of(&ev, "f16")
        );
        let fidelity = ev.iter().find(|e| e["event"] == "fidelity").unwrap();
        let cosine = fidelity["metrics"]["cosine_similarity"].as_f64().unwrap();
        assert!((0.9..=1.0).contains(&cosine), "{fidelity}");
    }
    assert_ne!(
        text_of(&events(&results[0].1), "f16"),
        text_of(&events(&results[1].1), "f16")
    );

    for (body, expected) in [
        ("not json", "not valid JSON"),
        (r#"{"prompt":""}"#, "empty"),
        (r#"{"prompt":"hi","cache":"q9"}"#, "unknown KV-cache type"),
        (r#"{"prompt":"hi","n_predict":100000}"#, "n_predict"),
        (r#"{"prompt":"hi","colour":"blue"}"#, "unknown field"),
    ] {
        let (status, text) = generate(url, body);
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(expected), "{body}: {text}");
    }
    assert_eq!(
        agent()
            .get(&format!("{url}/nothing"))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        agent()
            .get(&format!("{url}/api/generate"))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        405
    );
    // the server is still up after all that
    assert_eq!(
        agent()
            .get(&format!("{url}/api/info"))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[test]
fn page_in_headless_chromium_fills_both_columns() {
    let e2e = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e");
    let server = start();
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("serve.png");
    let out = Command::new("node")
        .current_dir(&e2e)
        .arg("page.mjs")
        .arg(&server.url)
        .arg(&shot)
        .output()
        .expect("node is needed for the page test: run scripts/setup");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(result["left"].as_str().unwrap().len() > 5, "{result}");
    assert!(result["right"].as_str().unwrap().len() > 5, "{result}");
    assert!(
        result["rightStats"]
            .as_str()
            .unwrap()
            .contains("smaller than f16"),
        "{result}"
    );
    assert!(
        result["fidelity"].as_str().unwrap().contains("cosine"),
        "{result}"
    );
    assert_eq!(&std::fs::read(&shot).unwrap()[..4], b"\x89PNG");
}
