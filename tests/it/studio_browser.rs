//! The template studio in a real headless Chromium, driven through ChromeDriver (WebDriver):
//! pick a template, type, watch the previews, break it and see the problem, save it, and see
//! that a page from another origin cannot drive the studio. Also takes the README's
//! screenshot (into `target/studio.png`, or `docs/studio.png` with
//! `KITEBRIDGE_UPDATE_SCREENSHOT=1`).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/install-chromium`, run by `.ci/test`).
//! Without them the tests fail in CI (`CI` set) and are skipped, saying so, elsewhere.

use crate::helpers::*;
use crate::studio::{Studio, studio_with};
use fantoccini::{Client, ClientBuilder, Locator, key::Key};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;

/// ChromeDriver on a free port, and a headless Chromium session through it.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
}

impl Browser {
    async fn start() -> Option<Self> {
        let (driver, chromium) = ("/usr/bin/chromedriver", "/usr/bin/chromium");
        if !std::path::Path::new(driver).exists() || !std::path::Path::new(chromium).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "Chromium and ChromeDriver are needed in CI: .ci/install-chromium installs them"
            );
            eprintln!(
                "skipped: no {driver} or {chromium} (bash .ci/install-chromium installs them)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1440,1000", "--hide-scrollbars"]
            }
        }))
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            // Plain HTTP to the local driver: no TLS crate needed.
            let mut builder = ClientBuilder::new(HttpConnector::new());
            builder.capabilities(caps.clone());
            let attempt = builder
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
                .ok();
            if let Some(client) = attempt {
                return Some(Self {
                    client,
                    _driver: child,
                });
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not answer within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Runs `script` in the page and returns its value.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// How many renders the page has drawn.
async fn renders(c: &Client) -> u64 {
    js(c, "return Number(document.body.dataset.renders || 0)")
        .await
        .as_u64()
        .unwrap_or(0)
}

/// Waits (up to 10 s) for `check` on the page's text of `selector`.
async fn wait_text(c: &Client, selector: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = match c.find(Locator::Css(selector)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if check(&text) || tokio::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the page has drawn more than `after` renders.
async fn next_render(c: &Client, after: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while renders(c).await <= after {
        assert!(tokio::time::Instant::now() < deadline, "no render drawn");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn open_template(c: &Client, kind: &str, name: &str) {
    let before = renders(c).await;
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(&format!(
            "[data-template][data-kind=\"{kind}\"][data-name=\"{name}\"]"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    next_render(c, before).await;
}

/// Replaces the editor's text by typing it, as a person would.
async fn type_source(c: &Client, text: &str) {
    let editor = c.find(Locator::Css("#editor .cm-content")).await.unwrap();
    editor.click().await.unwrap();
    let select_all = format!("{}a", char::from(Key::Control));
    editor.send_keys(&select_all).await.unwrap();
    editor
        .send_keys(&char::from(Key::Delete).to_string())
        .await
        .unwrap();
    let before = renders(c).await;
    editor.send_keys(text).await.unwrap();
    next_render(c, before).await;
    // Renders of the half-typed text may land after the keys are in: wait until the page has
    // been quiet for longer than its debounce, so the last picture is of the whole text.
    let mut seen = renders(c).await;
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = renders(c).await;
        if now == seen {
            break;
        }
        seen = now;
    }
}

async fn source(c: &Client) -> String {
    js(c, "return window.kbStudio.getSource()")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn studio_page(s: &Studio, browser: &Browser) {
    browser.client.goto(&s.url("/")).await.unwrap();
    browser
        .client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("[data-template]"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_template_is_edited_previewed_checked_and_saved_in_the_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let s = studio_with(None, false, true).await;
    let c = &browser.client;
    studio_page(&s, &browser).await;

    // slack/build on the failed build: the Slack preview draws it.
    open_template(c, "slack", "build").await;
    let original = source(c).await;
    assert!(
        original.contains("{{#> _message}}"),
        "the built-in source: {original}"
    );
    let preview = wait_text(c, "#preview-slack", |t| t.contains("Web App #1842 failed")).await;
    assert!(preview.contains("Web App #1842 failed"), "{preview}");
    assert!(preview.contains("Retry payment mock"), "{preview}");
    let link = c
        .find(Locator::Css("#blockkit-link"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        link.starts_with("https://app.slack.com/block-kit-builder/#"),
        "{link}"
    );

    // The route tester: which routes the failed build matches, and why, and which template
    // each destination uses.
    let routes = wait_text(c, "#routes", |t| t.contains("main failures")).await;
    let matched = c
        .find_all(Locator::Css("#routes li.route.matched"))
        .await
        .unwrap();
    assert_eq!(matched.len(), 2, "both routes match: {routes}");
    assert!(
        matched[0].text().await.unwrap().contains("main failures"),
        "{routes}"
    );
    let console_row = wait_text(c, "#routes table.deliveries", |t| t.contains("console")).await;
    assert!(console_row.contains("build"), "the template: {console_row}");

    // Drawn as Slack would: the attachment's colour bar (the failed build's red), fields.
    let bar = js(
        c,
        "const b = document.querySelector('#preview-slack .sl-bar'); return b ? getComputedStyle(b).backgroundColor : null",
    )
    .await;
    assert!(bar.is_string(), "a colour bar: {bar}");
    assert_ne!(
        bar,
        json!("rgb(221, 221, 221)"),
        "coloured, not the default grey"
    );

    // Typed: the preview follows.
    let typed = r#"{"text": "typed {{kb.pipeline}}", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*typed* for {{kb.pipeline}} <@U024BE7LH>"}}]}"#;
    type_source(c, typed).await;
    assert_eq!(source(c).await, typed, "the editor holds what was typed");
    let preview = wait_text(c, "#preview-slack", |t| t.contains("typed for Web App")).await;
    assert!(preview.contains("typed for Web App"), "{preview}");
    let mention = wait_text(c, "#preview-slack .mention", |t| t.contains("U024BE7LH")).await;
    assert!(
        mention.contains("@U024BE7LH"),
        "a mention, highlighted: {mention}"
    );
    let bold = wait_text(c, "#preview-slack b, #preview-slack strong", |t| {
        t == "typed"
    })
    .await;
    assert_eq!(bold, "typed", "mrkdwn drawn");
    let ms = js(c, "return Number(document.body.dataset.lastRenderMs)").await;
    eprintln!("keystroke to picture: {ms} ms");
    let body = wait_text(c, "#body", |t| t.contains("typed for Web App")).await;
    assert!(
        body.contains("\"type\": \"section\""),
        "pretty-printed: {body}"
    );

    // Broken JSON: the problem, at its line.
    type_source(c, "{\"text\": \"a\"\n\"blocks\": []}").await;
    let problem = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#problems li.problem"))
        .await
        .unwrap();
    assert_eq!(
        problem.attr("data-line").await.unwrap().as_deref(),
        Some("2")
    );
    assert!(problem.text().await.unwrap().contains("not JSON"));

    // The Teams card, drawn by Microsoft's renderer.
    open_template(c, "teams", "build").await;
    let card = wait_text(c, "#preview-teams", |t| t.contains("Web App #1842 failed")).await;
    assert!(card.contains("Web App #1842 failed"), "{card}");
    assert!(
        c.find(Locator::Css("#preview-teams .ac-adaptiveCard"))
            .await
            .is_ok(),
        "drawn by the adaptivecards renderer"
    );
    assert!(
        c.find(Locator::Css("#problems li.problem")).await.is_err(),
        "the built-in card has no problems: {}",
        wait_text(c, "#problems", |_| true).await
    );

    // A card Adaptive Card 1.4 does not allow: the schema's violations are problems, and the
    // renderer's own warnings are shown beside the card.
    let bad_card = r#"{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "for {{kb.pipeline}}", "size": "enormous"}, {"type": "Mystery"}]}}]}"#;
    type_source(c, bad_card).await;
    let schema = wait_text(c, "#problems", |t| t.contains("enormous")).await;
    let schema_items = c
        .find_all(Locator::Css("#problems li.problem.schema"))
        .await
        .unwrap();
    assert!(schema_items.len() >= 2, "{schema}");
    assert!(
        schema.contains("/body/0/size") || schema.contains("body[0].size"),
        "points at the property: {schema}"
    );
    assert!(schema.contains("must be one of"), "{schema}");
    assert!(
        schema.contains("\"Mystery\""),
        "an element type the schema does not know: {schema}"
    );
    let warnings = wait_text(c, "#teams-warnings", |t| t.contains("Mystery")).await;
    assert!(
        warnings.contains("Mystery"),
        "the renderer's warning: {warnings}"
    );
    let card = wait_text(c, "#preview-teams", |t| t.contains("for Web App")).await;
    assert!(card.contains("for Web App"), "still drawn: {card}");

    // The README's screenshot: the Slack preview of the failed build, from the built-in
    // source again (the page keeps each template's unsaved text).
    open_template(c, "slack", "build").await;
    let before = renders(c).await;
    js(
        c,
        &format!(
            "window.kbStudio.setSource({}); return true",
            json!(original)
        ),
    )
    .await;
    next_render(c, before).await;
    wait_text(c, "#preview-slack", |t| t.contains("Web App #1842 failed")).await;
    let png = c.screenshot().await.unwrap();
    let target = if std::env::var_os("KITEBRIDGE_UPDATE_SCREENSHOT").is_some() {
        concat!(env!("CARGO_MANIFEST_DIR"), "/docs/studio.png")
    } else {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/studio.png")
    };
    std::fs::write(target, &png).unwrap();

    // Save: README's walk-through, a field added to the failed-build message after its
    // Duration, written into the templates folder.
    let field = r#",{"type": "mrkdwn", "text": "*Triggered by*\n{{build.source}}"}"#;
    let duration_end = "{{else}}–{{/if}}\"}\n";
    assert!(original.contains(duration_end), "{original}");
    let edited = original.replacen(
        duration_end,
        &format!("{}{field}\n", duration_end.trim_end()),
        1,
    );
    let before = renders(c).await;
    js(
        c,
        &format!("window.kbStudio.setSource({}); return true", json!(edited)),
    )
    .await;
    next_render(c, before).await;
    let preview = wait_text(c, "#preview-slack", |t| t.contains("Triggered by")).await;
    assert!(
        preview.contains("Triggered by") && preview.contains("webhook"),
        "the seventh field: {preview}"
    );
    let body = wait_text(c, "#body", |t| t.contains("Triggered by")).await;
    assert!(body.contains("*Triggered by*\\nwebhook"), "{body}");
    c.find(Locator::Css("#save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let said = wait_text(c, "#save-result", |t| t.contains("reload")).await;
    let problems = wait_text(c, "#problems", |_| true).await;
    assert!(said.contains("reload"), "{said}\n{problems}");
    let file = s.templates().join("slack/build.hbs");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), edited);

    browser.client.close().await.unwrap();
}

/// A page from another origin that even holds the page's token tries to make the studio render
/// and send: the studio refuses each request for its origin, and nothing is sent.
#[tokio::test]
async fn a_page_from_another_origin_cannot_drive_the_studio() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let rec = Recorder::start().await;
    let s = studio_with(Some(&rec), true, true).await;
    let (render, send, token) = (
        s.url("/api/render"),
        s.url("/api/send"),
        s.running.token.clone(),
    );
    // A simple request (no preflight), a simple one with the token, and a CORS one with the
    // token (its preflight is refused).
    let page = format!(
        r#"<!doctype html><script>
        const body = JSON.stringify({{destination: "hook", kind: "slack", name: "build", sample: "builtin:ping"}});
        Promise.allSettled([
          fetch({render:?}, {{method: "POST", mode: "no-cors", headers: {{"content-type": "text/plain"}}, body}}),
          fetch({send:?}, {{method: "POST", mode: "no-cors", headers: {{"content-type": "text/plain", "x-kitebridge-token": {token:?}}}, body}}),
          fetch({send:?}, {{method: "POST", headers: {{"content-type": "application/json", "x-kitebridge-token": {token:?}}}, body}}),
        ]).finally(() => {{ document.title = "tried"; }});
        </script>"#
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let c = &browser.client;
    c.goto(&format!("http://{evil}/")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.title().await.unwrap() != "tried" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page's request did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rec.received().is_empty(), "nothing was sent");
    let (_, info) = s.get("/api/info").await;
    assert_eq!(
        info["refused"]["token"], 0,
        "refused for the origin, not the token: {info}"
    );
    assert!(
        info["refused"]["origin"].as_u64().unwrap() >= 3,
        "each of the page's requests was refused for its origin: {info}"
    );
    // The studio's own page, with its token, can.
    studio_page(&s, &browser).await;
    let sent = js(
        c,
        "return fetch('/api/send', {method: 'POST', headers: {'content-type': 'application/json', \
         'x-kitebridge-token': document.querySelector('meta[name=kb-token]').content}, \
         body: JSON.stringify({destination: 'hook', sample: 'builtin:ping'})}).then(r => r.status)",
    )
    .await;
    assert_eq!(sent, json!(200));
    assert_eq!(rec.wait_for("studio-hook", 1).await.len(), 1);
    browser.client.close().await.unwrap();
}
