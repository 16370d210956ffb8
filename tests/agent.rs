//! The LLM back end without whole rounds: the tools refuse every way out of the
//! workspace, a build script cannot write outside it (where the kernel has Landlock),
//! and the transport retries 429, 500 and stalls, gives up in bounded time, answers a
//! malformed tool call with an error, and never writes the key. The endpoint is the
//! scripted one in `agent/endpoint.rs`.

#[path = "agent/endpoint.rs"]
mod endpoint;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use endpoint::{Event, Reply, answer, error, sse_events};
use serde_json::json;
use vibeserve::agent::roles::{Budget, End, converse};
use vibeserve::agent::sandbox::{Workspace, landlock_supported};
use vibeserve::agent::tools::{ToolResult, Toolbox, name};
use vibeserve::agent::{ChatClient, ClientError, Endpoint, Role, Transcript};
use vibeserve::skills::Library;

const KEY: &str = "sk-test-NEVER-WRITE-ME-0123";

/// A workspace with a small crate, and a folder beside it that must never change.
struct Fixture {
    _dir: tempfile::TempDir,
    crate_dir: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("a temp dir");
    let crate_dir = dir.path().join("crate");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(crate_dir.join("src")).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("secret.txt"), "golden answers\n").expect("write");
    std::fs::write(
        crate_dir.join("Cargo.toml"),
        "[package]\nname = \"probe\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[workspace]\n",
    )
    .expect("write");
    std::fs::write(crate_dir.join("src/main.rs"), "fn main() {}\n").expect("write");
    std::fs::write(crate_dir.join("Plan.toml"), "# the plan\n").expect("write");
    Fixture {
        _dir: dir,
        crate_dir,
        outside,
    }
}

fn toolbox(f: &Fixture) -> Toolbox {
    Toolbox {
        workspace: Workspace::new(&f.crate_dir).expect("workspace"),
        skills: Library::embedded().expect("skills"),
        target_files: vec![],
        target_dir: f.crate_dir.parent().expect("parent").join("target"),
        hidden_env: vec!["VIBESERVE_TEST_KEY".into()],
        command_timeout: Duration::from_secs(300),
    }
}

/// Every file under `dir` with its contents, sorted.
fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), std::fs::read(e.path()).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

fn refused(r: &ToolResult) -> bool {
    matches!(r, ToolResult::Err(_))
}

#[test]
fn escape_attempts_are_refused_and_nothing_outside_changes() {
    let f = fixture();
    let tools = toolbox(&f);
    std::os::unix::fs::symlink("/etc", f.crate_dir.join("etc")).expect("symlink");
    std::os::unix::fs::symlink(&f.outside, f.crate_dir.join("out")).expect("symlink");
    let before = listing(&f.outside);
    let attempts = [
        (name::READ, json!({"path": "../outside/secret.txt"})),
        (name::READ, json!({"path": "/etc/passwd"})),
        (name::READ, json!({"path": "etc/passwd"})),
        (
            name::WRITE,
            json!({"path": "etc/vibeserve-escape", "content": "x"}),
        ),
        (name::LIST, json!({"path": "etc"})),
        (
            name::WRITE,
            json!({"path": "../outside/secret.txt", "content": "x"}),
        ),
        (
            name::WRITE,
            json!({"path": "/tmp/vibeserve-escape", "content": "x"}),
        ),
        (
            name::WRITE,
            json!({"path": "out/secret.txt", "content": "x"}),
        ),
        (
            name::WRITE,
            json!({"path": "src/../../outside/new.txt", "content": "x"}),
        ),
        (
            name::REPLACE,
            json!({"path": "out/secret.txt", "old": "golden", "new": "x"}),
        ),
        (name::WRITE, json!({"path": "Plan.toml", "content": "x"})),
        (name::LIST, json!({"path": "out"})),
        (
            name::SEARCH,
            json!({"pattern": "golden", "path": "../outside"}),
        ),
        (
            name::APPLY_DIFF,
            json!({"diff": "--- a/../outside/secret.txt\n+++ b/../outside/secret.txt\n@@ -1 +1 @@\n-golden answers\n+x\n"}),
        ),
        (
            name::CARGO,
            json!({"subcommand": "install", "args": ["ripgrep"]}),
        ),
        (
            name::CARGO,
            json!({"subcommand": "build", "args": ["--manifest-path", "/etc/Cargo.toml"]}),
        ),
        (
            name::CARGO,
            json!({"subcommand": "build", "args": ["--config", "build.target-dir='/tmp/x'"]}),
        ),
        (
            name::CARGO,
            json!({"subcommand": "run", "args": ["--", "/etc/passwd"]}),
        ),
        ("shell", json!({"command": "cat /etc/passwd"})),
    ];
    for (tool, args) in &attempts {
        let result = tools.call(tool, &args.to_string());
        assert!(
            refused(&result),
            "{tool} {args} was not refused: {result:?}"
        );
    }
    assert_eq!(
        listing(&f.outside),
        before,
        "something outside the workspace changed"
    );
    assert!(!Path::new("/tmp/vibeserve-escape").exists());
    assert!(!Path::new("/etc/vibeserve-escape").exists());
    assert_eq!(
        std::fs::read_to_string(f.crate_dir.join("Plan.toml")).expect("read"),
        "# the plan\n"
    );
    // The legitimate versions of the same calls work.
    let ok = tools.call(
        name::WRITE,
        &json!({"path": "src/lib.rs", "content": "pub fn f() {}\n"}).to_string(),
    );
    assert!(matches!(ok, ToolResult::Ok(_)), "{ok:?}");
    let read = tools.call(name::READ, &json!({"path": "src/lib.rs"}).to_string());
    assert!(read.text().contains("pub fn f()"), "{read:?}");
    let skill = tools.call(
        name::READ_SKILL,
        &json!({"id": "hardware/matmul-tiling"}).to_string(),
    );
    assert!(matches!(skill, ToolResult::Ok(_)), "{skill:?}");
}

#[test]
fn a_build_script_cannot_write_outside_the_workspace() {
    if !landlock_supported() {
        eprintln!("skipped: this kernel does not enforce Landlock");
        return;
    }
    let f = fixture();
    let tools = toolbox(&f);
    let target = f.outside.join("planted.txt");
    let script = format!(
        "fn main() {{ std::fs::write({:?}, \"escaped\").expect(\"write outside\"); }}\n",
        target.display().to_string()
    );
    let wrote = tools.call(
        name::WRITE,
        &json!({"path": "build.rs", "content": script}).to_string(),
    );
    assert!(matches!(wrote, ToolResult::Ok(_)), "{wrote:?}");
    let before = listing(&f.outside);
    let built = tools.call(name::CARGO, &json!({"subcommand": "build"}).to_string());
    let text = built.text();
    assert!(text.contains("(landlock)"), "{text}");
    assert!(
        !text.contains("exit code 0"),
        "the build script's write succeeded: {text}"
    );
    assert!(
        !target.exists(),
        "the build script wrote outside the workspace"
    );
    assert_eq!(listing(&f.outside), before);
    // Without the escape the same crate builds under the same rules.
    std::fs::write(f.crate_dir.join("build.rs"), "fn main() {}\n").expect("write");
    let built = tools.call(name::CARGO, &json!({"subcommand": "build"}).to_string());
    assert!(built.text().contains("exit code 0"), "{}", built.text());
}

fn client(url: &str) -> ChatClient {
    let mut c = ChatClient::new(Endpoint {
        base_url: url.into(),
        api_key: KEY.into(),
        model: "scripted".into(),
    });
    c.timeout = Duration::from_secs(4);
    c.stall = Duration::from_secs(2);
    c.first_backoff = Duration::from_millis(10);
    c
}

fn budget() -> Budget {
    Budget {
        max_tool_calls: 10,
        max_tokens: 100_000,
        deadline: Instant::now() + Duration::from_secs(60),
        tool_calls: 0,
        tokens: 0,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn transient_failures_are_retried_and_the_key_is_sent_but_never_written() {
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let ep = endpoint::start(Arc::new(move |_, _| {
        let first_chunk = || {
            sse_events(&answer(Some("{\"verdict\": \"pass\"}"), &[], 30, 7), true)
                .into_iter()
                .next()
                .expect("a stream has a first chunk")
        };
        match count.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::Json(429, error("slow down")),
            1 => Reply::Json(500, error("overloaded")),
            2 => Reply::Stall(Duration::from_secs(5)),
            // The stream opens, sends its first chunk, then goes silent.
            3 => Reply::Events(vec![first_chunk(), Event::Pause(Duration::from_secs(5))]),
            // A chunk that is not JSON.
            4 => Reply::Events(vec![
                first_chunk(),
                Event::Data("{\"choices\": [ oops".into()),
            ]),
            // A stream that ends before any chunk.
            5 => Reply::Events(vec![]),
            _ => Reply::Json(
                200,
                answer(
                    Some("{\"verdict\": \"pass\", \"reason\": \"fine\"}"),
                    &[],
                    30,
                    7,
                ),
            ),
        }
    }));
    let client = client(&ep.url);
    let (end, conv) = rt().block_on(converse(
        &client,
        Role::Reviewer,
        "You are the Judge reviewer",
        "diff",
        None,
        &mut budget(),
    ));
    assert!(
        matches!(&end, End::Done(a) if a.contains("pass")),
        "{end:?}"
    );
    assert_eq!(n.load(Ordering::SeqCst), 7, "six failures, then the answer");
    // async-openai's own layer retries the 429 and the 500; the stall before the
    // answer, the stall inside the stream, the broken chunk and the empty stream are ours.
    assert_eq!((conv.usage.calls, conv.usage.retries), (1, 4));
    // Counted from the stream's usage chunk.
    assert_eq!(
        (
            conv.usage.prompt_tokens,
            conv.usage.completion_tokens,
            conv.usage.estimated
        ),
        (30, 7, 0)
    );
    let reqs = ep.requests.lock().expect("lock");
    assert!(
        reqs.iter()
            .all(|r| r["stream"] == true && r["stream_options"]["include_usage"] == true),
        "every request streams and asks for usage"
    );
    drop(reqs);
    assert!(
        ep.auth
            .lock()
            .expect("lock")
            .iter()
            .all(|a| a == &format!("Bearer {KEY}"))
    );
    let dir = tempfile::tempdir().expect("tmp");
    let t = Transcript {
        round: 1,
        model: "scripted".into(),
        conversations: vec![conv],
        ..Transcript::default()
    };
    t.write(dir.path(), KEY).expect("write");
    for (path, bytes) in listing(dir.path()) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(KEY),
            "{} holds the key",
            path.display()
        );
    }
}

#[test]
fn an_endpoint_that_keeps_failing_ends_in_bounded_time_without_the_key_in_the_error() {
    let ep = endpoint::start(Arc::new(|_, _| {
        Reply::Json(503, error(&format!("bad key {KEY}")))
    }));
    let failing = client(&ep.url);
    let start = Instant::now();
    let (end, _) = rt().block_on(converse(
        &failing,
        Role::Evaluator,
        "You are the Performance Evaluator",
        "figures",
        None,
        &mut budget(),
    ));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    let End::Failed(e) = end else {
        panic!("expected a failure, got {end:?}")
    };
    assert!(matches!(e, ClientError::GaveUp { attempts: 5, .. }), "{e}");
    assert!(!e.to_string().contains(KEY), "{e}");
    // A stalled endpoint under a round deadline ends as an exhausted budget.
    let stall = endpoint::start(Arc::new(|_, _| Reply::Stall(Duration::from_secs(60))));
    let mut b = budget();
    b.deadline = Instant::now() + Duration::from_secs(3);
    let start = Instant::now();
    let (end, _) = rt().block_on(converse(
        &client(&stall.url),
        Role::Reviewer,
        "You are the Judge reviewer",
        "d",
        None,
        &mut b,
    ));
    assert!(matches!(end, End::Exhausted(_)), "{end:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    // A 401 is not retried.
    let denied = endpoint::start(Arc::new(|_, _| Reply::Json(401, error("invalid key"))));
    let (end, _) = rt().block_on(converse(
        &client(&denied.url),
        Role::Reviewer,
        "You are the Judge reviewer",
        "d",
        None,
        &mut budget(),
    ));
    assert!(matches!(end, End::Failed(ClientError::Fatal(_))), "{end:?}");
    assert_eq!(denied.requests.lock().expect("lock").len(), 1);
}

#[test]
fn a_malformed_tool_call_is_answered_with_an_error_and_the_agent_goes_on() {
    let f = fixture();
    let tools = toolbox(&f);
    let ep = endpoint::start(Arc::new(|body, _| {
        let reply = match endpoint::step_of(body) {
            0 => answer(None, &[(name::READ, "{\"path\": ".into())], 50, 5),
            1 => answer(None, &[("no_such_tool", "{}".into())], 60, 5),
            2 => answer(
                None,
                &[(
                    name::WRITE,
                    json!({"path": "src/lib.rs", "content": "pub const X: u32 = 1;\n"}).to_string(),
                )],
                70,
                5,
            ),
            _ => answer(
                None,
                &[(name::FINISH, json!({"summary": "added X"}).to_string())],
                80,
                5,
            ),
        };
        Reply::Json(200, reply)
    }));
    let mut b = budget();
    let (end, conv) = rt().block_on(converse(
        &client(&ep.url),
        Role::Implementer,
        "You are the Implementer",
        "task",
        Some(&tools),
        &mut b,
    ));
    assert_eq!(end, End::Done("added X".into()));
    let tool_texts: Vec<String> = conv
        .messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        tool_texts[0].starts_with("error: the arguments are not valid JSON"),
        "{tool_texts:?}"
    );
    assert!(
        tool_texts[1].starts_with("error: there is no tool `no_such_tool`"),
        "{tool_texts:?}"
    );
    assert_eq!(
        std::fs::read_to_string(f.crate_dir.join("src/lib.rs")).expect("read"),
        "pub const X: u32 = 1;\n"
    );
    assert_eq!(
        (conv.usage.calls, conv.usage.tool_calls, b.tokens),
        (4, 4, 280)
    );
    // The tool list was offered with every request.
    let reqs = ep.requests.lock().expect("lock");
    assert!(
        reqs.iter()
            .all(|r| r["tools"].as_array().is_some_and(|t| t.len() == 10))
    );
}

#[test]
fn a_spent_tool_budget_ends_the_conversation() {
    let f = fixture();
    let tools = toolbox(&f);
    let ep = endpoint::start(Arc::new(|_, _| {
        Reply::Json(200, answer(None, &[(name::LIST, "{}".into())], 10, 1))
    }));
    let mut b = budget();
    b.max_tool_calls = 3;
    let (end, conv) = rt().block_on(converse(
        &client(&ep.url),
        Role::Implementer,
        "You are the Implementer",
        "task",
        Some(&tools),
        &mut b,
    ));
    assert!(
        matches!(&end, End::Exhausted(w) if w.contains("3 tool calls")),
        "{end:?}"
    );
    assert_eq!(conv.usage.tool_calls, 3);
}
