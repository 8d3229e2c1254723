//! Helpers for the tests that drive the real `token-tool` binary.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_token-tool");

pub struct Run {
    pub code: i32,
    pub json: serde_json::Value,
    pub stderr: String,
}

/// Run `token-tool --json ARGS` in `dir`.
pub fn tt(dir: &Path, args: &[&str]) -> Run {
    let out: Output = Command::new(BIN)
        .arg("--json")
        .args(args)
        .current_dir(dir)
        .env_remove("TOKEN_TOOL_CRASH_POINT")
        .output()
        .expect("spawn token-tool");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    Run {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Run and insist on success.
pub fn ok(dir: &Path, args: &[&str]) -> serde_json::Value {
    let r = tt(dir, args);
    assert_eq!(r.code, 0, "token-tool {args:?} failed: {}", r.stderr);
    assert_eq!(r.json["ok"], true, "token-tool {args:?}: {}", r.json);
    r.json
}

/// Run and insist on a refusal (exit 3) with this error code.
pub fn refused(dir: &Path, args: &[&str], code: &str) -> String {
    let r = tt(dir, args);
    assert_eq!(
        r.code, 3,
        "token-tool {args:?}: expected refusal {code}, got exit {} {}",
        r.code, r.json
    );
    assert_eq!(r.json["error"], code, "token-tool {args:?}: {}", r.json);
    assert!(
        r.stderr.contains(code),
        "stderr names the refusal: {}",
        r.stderr
    );
    r.json["message"].as_str().unwrap_or_default().to_string()
}
