//! Kill the broker with SIGKILL in the middle of a sale, at each step, and check the ledger:
//! no value released twice, none paid for lost. The CLI stops at the step named by
//! TOKEN_TOOL_CRASH_POINT and says so on stderr; we kill it as soon as we read that line,
//! so the test never depends on timing.

mod common;
use common::{ok, BIN};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use token_tool::broker::{Broker, CRASH_POINT_ENV};
use token_tool::chain::iterate;

const POINTS: &[(&str, bool)] = &[
    // (crash point, whether the sale is committed when the process dies)
    ("sale-begin", false),
    ("sale-computed", false),
    ("sale-inserted", false),
    ("sale-updated", false),
    ("sale-committed", true),
];

fn sell_args() -> Vec<&'static str> {
    vec![
        "--json",
        "broker",
        "--db",
        "b.db",
        "sell",
        "--job",
        "1",
        "--count",
        "10",
        "--payment-ref",
        "pay-crash",
    ]
}

/// Start a sale that stops at `point`, wait for it to get there, SIGKILL it.
fn crash_at(d: &Path, point: &str) {
    let mut child = Command::new(BIN)
        .args(sell_args())
        .current_dir(d)
        .env(CRASH_POINT_ENV, point)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn token-tool");
    let stderr = child.stderr.take().expect("stderr piped");
    let mut reached = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("read stderr");
        if line == format!("CRASH-POINT {point}") {
            reached = true;
            break;
        }
    }
    // Child::kill sends SIGKILL on Unix: no destructor, no rollback, no flush runs.
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert!(reached, "the sale never reached {point} (exit {status})");
    assert!(
        status.code().is_none(),
        "killed by a signal, not exited: {status}"
    );
    let stdout = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(stdout.is_empty(), "the customer got no reply: {stdout}");
}

#[test]
fn sigkill_at_every_step_of_a_sale() {
    for &(point, committed) in POINTS {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        ok(d, &["broker", "--db", "b.db", "init"]);
        ok(
            d,
            &[
                "broker",
                "--db",
                "b.db",
                "add-node",
                "--node-id",
                "1",
                "--secret-out",
                "n1.secret",
            ],
        );
        ok(
            d,
            &[
                "broker",
                "--db",
                "b.db",
                "mint",
                "--node-id",
                "1",
                "--length",
                "1000",
                "--max-topup",
                "100",
            ],
        );
        let first = ok(
            d,
            &[
                "broker",
                "--db",
                "b.db",
                "sell",
                "--job",
                "1",
                "--count",
                "10",
                "--payment-ref",
                "pay-first",
            ],
        );

        crash_at(d, point);

        // After the crash: the ledger is consistent and the sale is all there or not at all.
        let (released_after_crash, stored_value) = {
            let b = Broker::open(&d.join("b.db")).unwrap();
            assert_eq!(
                b.check().unwrap(),
                Vec::<String>::new(),
                "{point}: ledger inconsistent"
            );
            let sales = b.sales(1).unwrap();
            let ours: Vec<_> = sales
                .iter()
                .filter(|s| s.payment_ref == "pay-crash")
                .collect();
            assert_eq!(ours.len(), committed as usize, "{point}: sale half there");
            (b.job(1).unwrap().released, ours.first().map(|s| s.value))
        };
        assert_eq!(
            released_after_crash,
            if committed { 20 } else { 10 },
            "{point}"
        );

        // The customer retries with the same payment reference and gets exactly one sale.
        let retry = ok(d, &sell_args()[1..]);
        assert_eq!(retry["sale"]["repeated"], committed, "{point}");
        assert_eq!(retry["sale"]["from"], 10, "{point}");
        let value: [u8; 20] = token_tool::from_hex(retry["sale"]["value"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        if let Some(v) = stored_value {
            assert_eq!(
                v, value,
                "{point}: the retry returns the value already paid for"
            );
        }
        // It extends the first sale by exactly 10 steps: nothing skipped, nothing reused.
        let first_value: [u8; 20] = token_tool::from_hex(first["sale"]["value"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(iterate(&value, 10), first_value, "{point}");

        let b = Broker::open(&d.join("b.db")).unwrap();
        assert_eq!(b.job(1).unwrap().released, 20, "{point}");
        assert_eq!(
            b.sales(1)
                .unwrap()
                .iter()
                .filter(|s| s.payment_ref == "pay-crash")
                .count(),
            1,
            "{point}"
        );
        // The next sale starts after it.
        drop(b);
        let next = ok(
            d,
            &[
                "broker",
                "--db",
                "b.db",
                "sell",
                "--job",
                "1",
                "--count",
                "5",
                "--payment-ref",
                "pay-next",
            ],
        );
        assert_eq!(next["sale"]["from"], 20, "{point}");
        ok(d, &["broker", "--db", "b.db", "check"]);
    }
}

/// Four broker processes selling on the same job at once: SQLite's IMMEDIATE transactions
/// serialise them, so the sales tile the chain with no value sold twice.
#[test]
fn concurrent_sales_from_several_processes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["broker", "--db", "b.db", "init"]);
    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "add-node",
            "--node-id",
            "1",
            "--secret-out",
            "n1.secret",
        ],
    );
    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "mint",
            "--node-id",
            "1",
            "--length",
            "1000",
            "--max-topup",
            "100",
        ],
    );
    let children: Vec<_> = (0..4)
        .map(|p| {
            let d = d.to_path_buf();
            std::thread::spawn(move || {
                for i in 0..5 {
                    let r = format!("p{p}-{i}");
                    ok(
                        &d,
                        &[
                            "broker",
                            "--db",
                            "b.db",
                            "sell",
                            "--job",
                            "1",
                            "--count",
                            "3",
                            "--payment-ref",
                            &r,
                        ],
                    );
                }
            })
        })
        .collect();
    for c in children {
        c.join().expect("seller thread");
    }
    let b = Broker::open(&d.join("b.db")).unwrap();
    assert_eq!(b.check().unwrap(), Vec::<String>::new());
    assert_eq!(b.job(1).unwrap().released, 60);
    let mut froms: Vec<u64> = b.sales(1).unwrap().iter().map(|s| s.from).collect();
    froms.sort();
    assert_eq!(froms, (0..20).map(|i| i * 3).collect::<Vec<_>>());
}
