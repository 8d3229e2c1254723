//! The node ledger: what packetd keeps per job.
//!
//! It accepts a boot token once per job, then top-ups whose value hashes onto the last
//! accepted value in m <= max_topup steps; it keeps the balance, debits consumption and
//! issues redemption certificates. Every change is written to disk (atomically, see
//! fsutil) *before* the caller learns it was accepted, so a restart sees every value already
//! accepted and a replay after a crash or reboot is refused.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::chain::{f, iterate, Value};
use crate::error::TokenError;
use crate::fsutil::atomic_write;
use crate::wire::{hex20, BootFields, Certificate, NodeKey, TopUp, TOPUP_LEN};

/// Values kept per job to name replays exactly (older ones are still refused, as a
/// chain mismatch or via the forward scan).
const HISTORY_KEEP: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("node ledger {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node ledger {path} is corrupt: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("node ledger already exists in {0}")]
    Exists(PathBuf),
    #[error("certificate NOT written to {path}: {source}")]
    CertificateNotWritten {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LedgerError {
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::Token(t) => t.code(),
            LedgerError::Io { .. } | LedgerError::CertificateNotWritten { .. } => "io",
            LedgerError::Corrupt { .. } => "corrupt-ledger",
            LedgerError::Exists(_) => "exists",
        }
    }
    pub fn is_refusal(&self) -> bool {
        matches!(self, LedgerError::Token(t) if t.is_refusal())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobState {
    pub job_id: u64,
    #[serde(with = "hex20")]
    pub anchor: Value,
    /// Last accepted chain value.
    #[serde(with = "hex20")]
    pub last: Value,
    /// Tokens accepted in total.
    pub accepted: u64,
    pub balance: u64,
    pub consumed: u64,
    pub max_topup: u32,
    pub memory_mib: u32,
    pub vcpus: u16,
    pub expiry: u64,
    pub closed: bool,
    /// Recently accepted values (boot `first` and each top-up), newest last.
    #[serde(with = "hexvec")]
    pub history: Vec<Value>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct LedgerFile {
    format: u32,
    node_id: u32,
    jobs: BTreeMap<u64, JobState>,
}

/// Result of a debit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Debit {
    pub debited: u64,
    pub balance: u64,
    /// The VM asked for more than it had: time to purge it (after its grace period).
    pub exhausted: bool,
}

pub struct NodeLedger {
    dir: PathBuf,
    secret: Vec<u8>,
    /// The secret's HMAC key pads, hashed once (every boot token is checked with them).
    key: NodeKey,
    state: LedgerFile,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl NodeLedger {
    pub fn ledger_path(dir: &Path) -> PathBuf {
        dir.join("ledger.json")
    }
    pub fn secret_path(dir: &Path) -> PathBuf {
        dir.join("secret")
    }

    /// Create a node state directory holding the node id and the secret shared with the broker.
    pub fn create(dir: &Path, node_id: u32, secret: &[u8]) -> Result<NodeLedger, LedgerError> {
        if secret.len() < crate::wire::MIN_SECRET_LEN || secret.len() > crate::wire::MAX_SECRET_LEN
        {
            return Err(TokenError::InvalidField {
                field: "secret",
                reason: "must be 16..=64 bytes",
            }
            .into());
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lp = Self::ledger_path(dir);
        if lp.exists() {
            return Err(LedgerError::Exists(dir.to_path_buf()));
        }
        let sp = Self::secret_path(dir);
        atomic_write(
            &sp,
            format!("{}\n", crate::to_hex(secret)).as_bytes(),
            0o600,
        )
        .map_err(io_err(&sp))?;
        let l = NodeLedger {
            dir: dir.to_path_buf(),
            secret: secret.to_vec(),
            key: NodeKey::new(secret)?,
            state: LedgerFile {
                format: 1,
                node_id,
                jobs: BTreeMap::new(),
            },
        };
        l.save()?;
        Ok(l)
    }

    pub fn open(dir: &Path) -> Result<NodeLedger, LedgerError> {
        let sp = Self::secret_path(dir);
        let hex = fs::read_to_string(&sp).map_err(io_err(&sp))?;
        let secret = crate::from_hex(&hex).map_err(|e| LedgerError::Corrupt {
            path: sp.clone(),
            msg: e.to_string(),
        })?;
        let lp = Self::ledger_path(dir);
        let text = fs::read(&lp).map_err(io_err(&lp))?;
        let state: LedgerFile =
            serde_json::from_slice(&text).map_err(|e| LedgerError::Corrupt {
                path: lp.clone(),
                msg: e.to_string(),
            })?;
        if state.format != 1 {
            return Err(LedgerError::Corrupt {
                path: lp,
                msg: format!("unknown format {}", state.format),
            });
        }
        let key = NodeKey::new(&secret).map_err(|e| LedgerError::Corrupt {
            path: sp.clone(),
            msg: e.to_string(),
        })?;
        Ok(NodeLedger {
            dir: dir.to_path_buf(),
            secret,
            key,
            state,
        })
    }

    fn save(&self) -> Result<(), LedgerError> {
        let lp = Self::ledger_path(&self.dir);
        let json = serde_json::to_vec_pretty(&self.state).map_err(|e| LedgerError::Corrupt {
            path: lp.clone(),
            msg: e.to_string(),
        })?;
        atomic_write(&lp, &json, 0o600).map_err(io_err(&lp))
    }

    /// Apply `change` to a copy, persist it, then adopt it: a failed write leaves memory and
    /// disk as they were.
    fn commit(&mut self, next: LedgerFile) -> Result<(), LedgerError> {
        let prev = std::mem::replace(&mut self.state, next);
        if let Err(e) = self.save() {
            self.state = prev;
            return Err(e);
        }
        Ok(())
    }

    pub fn node_id(&self) -> u32 {
        self.state.node_id
    }
    pub fn job(&self, job: u64) -> Option<&JobState> {
        self.state.jobs.get(&job)
    }
    pub fn jobs(&self) -> impl Iterator<Item = &JobState> {
        self.state.jobs.values()
    }

    /// Verify a boot token and open its job. Refuses a second boot token for the same job.
    pub fn accept_boot(&mut self, bytes: &[u8], now: u64) -> Result<JobState, LedgerError> {
        let t = BootFields::check(bytes, &self.key, self.state.node_id, now)?;
        if self.state.jobs.contains_key(&t.job_id) {
            return Err(TokenError::BootTokenReused { job: t.job_id }.into());
        }
        let js = JobState {
            job_id: t.job_id,
            anchor: t.anchor,
            last: t.first,
            accepted: t.count as u64,
            balance: t.count as u64,
            consumed: 0,
            max_topup: t.max_topup,
            memory_mib: t.memory_mib,
            vcpus: t.vcpus,
            expiry: t.expiry,
            closed: false,
            history: vec![t.first],
        };
        let mut next = self.state.clone();
        next.jobs.insert(t.job_id, js.clone());
        self.commit(next)?;
        Ok(js)
    }

    /// Accept a top-up: f^m(value) must equal the last accepted value, m <= max_topup.
    pub fn accept_topup(&mut self, bytes: &[u8]) -> Result<JobState, LedgerError> {
        let tu = TopUp::decode(bytes)?;
        if tu.node_id != self.state.node_id {
            return Err(TokenError::WrongNode {
                token_node: tu.node_id,
                this_node: self.state.node_id,
            }
            .into());
        }
        let js = self
            .state
            .jobs
            .get(&tu.job_id)
            .ok_or(TokenError::UnknownJob { job: tu.job_id })?;
        if js.closed {
            return Err(TokenError::JobClosed { job: tu.job_id }.into());
        }
        if js.history.contains(&tu.value) || tu.value == js.anchor {
            return Err(TokenError::Replay { job: tu.job_id }.into());
        }
        if tu.count > js.max_topup {
            return Err(TokenError::SkipPastBound {
                count: tu.count,
                bound: js.max_topup,
            }
            .into());
        }
        if iterate(&tu.value, tu.count as u64) != js.last {
            // An older value of this chain lies between `last` and the anchor: walk forward
            // from `last` (bounded) to name a replay precisely.
            let mut x = js.last;
            for _ in 0..js.accepted.min(js.max_topup as u64 * 4) {
                x = f(&x);
                if x == tu.value {
                    return Err(TokenError::Replay { job: tu.job_id }.into());
                }
            }
            return Err(TokenError::ChainMismatch {
                job: tu.job_id,
                count: tu.count,
            }
            .into());
        }
        let mut next = self.state.clone();
        let j = next
            .jobs
            .get_mut(&tu.job_id)
            .ok_or(TokenError::UnknownJob { job: tu.job_id })?;
        j.last = tu.value;
        j.accepted = j.accepted.saturating_add(tu.count as u64);
        j.balance = j.balance.saturating_add(tu.count as u64);
        j.history.push(tu.value);
        if j.history.len() > HISTORY_KEEP {
            j.history.remove(0);
        }
        let out = j.clone();
        self.commit(next)?;
        Ok(out)
    }

    /// Debit `tokens` of consumption. Takes what is there; `exhausted` says it was not enough.
    pub fn consume(&mut self, job: u64, tokens: u64) -> Result<Debit, LedgerError> {
        let mut next = self.state.clone();
        let j = next
            .jobs
            .get_mut(&job)
            .ok_or(TokenError::UnknownJob { job })?;
        if j.closed {
            return Err(TokenError::JobClosed { job }.into());
        }
        let debited = tokens.min(j.balance);
        j.balance -= debited;
        j.consumed = j.consumed.saturating_add(debited);
        let d = Debit {
            debited,
            balance: j.balance,
            exhausted: tokens > debited,
        };
        // Nothing changed (a node bills every second, mostly less than a token): no write.
        if debited > 0 {
            self.commit(next)?;
        }
        Ok(d)
    }

    /// Close the job and sign a certificate for its unspent balance. Once closed, no top-up
    /// or debit is accepted; asking again returns a certificate with the same figures.
    pub fn redeem(&mut self, job: u64, now: u64) -> Result<(Certificate, Vec<u8>), LedgerError> {
        let mut next = self.state.clone();
        let j = next
            .jobs
            .get_mut(&job)
            .ok_or(TokenError::UnknownJob { job })?;
        j.closed = true;
        let cert = Certificate {
            node_id: next.node_id,
            job_id: job,
            accepted: j.accepted,
            balance: j.balance,
            issued_at: now,
            last: j.last,
        };
        let bytes = cert.encode(&self.secret)?;
        self.commit(next)?;
        Ok((cert, bytes))
    }
}

/// What a node does with a job's ledger entry over its life, beyond the token rules above:
/// a top-up as the guest writes it, billing by memory x time, the certificate file.
impl NodeLedger {
    /// A top-up for `job` as a guest writes it into its xenstore area: the 44-byte top-up in
    /// hex (whitespace ignored). Returns the job's new state, or the refusal code
    /// (`wrong-job` when the top-up names another job).
    pub fn accept_topup_hex(&mut self, job: u64, hex: &str) -> Result<JobState, &'static str> {
        // Whitespace aside a top-up is 88 hex digits; anything much longer is refused unread.
        if hex.len() > 4 * TOPUP_LEN {
            return Err("oversized");
        }
        let bytes = crate::from_hex(hex).map_err(|e| e.code())?;
        if TopUp::decode(&bytes).map_err(|e| e.code())?.job_id != job {
            return Err("wrong-job");
        }
        self.accept_topup(&bytes).map_err(|e| e.code())
    }

    /// Bill `dt_ms` of the job's memory at `price` MiB x ms per token. `owed` (MiB x ms not
    /// yet paid, kept by the caller between calls) grows by memory x `dt_ms`; the whole
    /// tokens in it are debited ([`consume`](Self::consume)) and the remainder stays owed.
    pub fn bill(
        &mut self,
        job: u64,
        owed: &mut u64,
        dt_ms: u64,
        price: u64,
    ) -> Result<Debit, LedgerError> {
        let price = price.max(1);
        let memory = self.job(job).map_or(0, |s| s.memory_mib as u64);
        *owed = owed.saturating_add(dt_ms.saturating_mul(memory));
        let debit = self.consume(job, *owed / price);
        *owed %= price;
        debit
    }

    /// Where a closed job's certificate is kept: certs/JOB.lmrc in the state directory.
    pub fn certificate_path(&self, job: u64) -> PathBuf {
        self.dir.join("certs").join(format!("{job}.lmrc"))
    }

    /// Close the job ([`redeem`](Self::redeem)) and keep its certificate at
    /// [`certificate_path`](Self::certificate_path), where [`kept_certificate`]
    /// (Self::kept_certificate) finds it. The job stays closed if the file cannot be written.
    pub fn close(&mut self, job: u64, now: u64) -> Result<(Certificate, PathBuf), LedgerError> {
        let (cert, bytes) = self.redeem(job, now)?;
        let path = self.certificate_path(job);
        let written = fs::create_dir_all(self.dir.join("certs"))
            .and_then(|_| atomic_write(&path, &bytes, 0o644));
        written.map_err(|source| LedgerError::CertificateNotWritten {
            path: path.clone(),
            source,
        })?;
        Ok((cert, path))
    }

    /// The kept certificate of `job` as its customer fetches it, or why not: `job-open`
    /// while the job runs, `unknown-job` when there is none.
    pub fn kept_certificate(&self, job: u64) -> Result<Vec<u8>, &'static str> {
        if self.job(job).is_some_and(|j| !j.closed) {
            return Err("job-open");
        }
        fs::read(self.certificate_path(job)).map_err(|_| "unknown-job")
    }
}

pub(crate) mod hexvec {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[[u8; 20]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| crate::to_hex(x)))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 20]>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| crate::value_from_hex(s).map_err(D::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Chain;
    use crate::wire::{BootToken, Extent};

    const SECRET: &[u8] = b"node-secret-0123456789";

    fn boot(c: &Chain, job: u64, count: u32) -> Vec<u8> {
        BootToken {
            vcpus: 1,
            node_id: 1,
            memory_mib: 128,
            job_id: job,
            expiry: 5_000,
            count,
            max_topup: 50,
            nonce: [1; 16],
            anchor: c.anchor(),
            first: c.released_value(count as u64).unwrap(),
            loader_sha1: [2; 20],
            extents: vec![Extent {
                disk: 0,
                writable: true,
                start_sector: 0,
                sectors: 8,
            }],
        }
        .encode(SECRET)
        .unwrap()
    }

    fn topup(c: &Chain, job: u64, from: u64, count: u32) -> Vec<u8> {
        TopUp {
            node_id: 1,
            job_id: job,
            count,
            value: c.released_value(from + count as u64).unwrap(),
        }
        .encode()
    }

    #[test]
    fn restart_cannot_replay() {
        let d = tempfile::tempdir().unwrap();
        let c = Chain::mint([3; 20], 1000, 32, |_| {}).unwrap();
        let bt = boot(&c, 9, 10);
        let tu = topup(&c, 9, 10, 10);
        {
            let mut l = NodeLedger::create(d.path(), 1, SECRET).unwrap();
            l.accept_boot(&bt, 100).unwrap();
            l.accept_topup(&tu).unwrap();
            assert_eq!(l.job(9).unwrap().balance, 20);
        } // "crash": drop everything in memory
        let mut l = NodeLedger::open(d.path()).unwrap();
        assert_eq!(l.job(9).unwrap().balance, 20);
        assert_eq!(
            l.accept_boot(&bt, 100).unwrap_err().code(),
            "boot-token-reused"
        );
        assert_eq!(l.accept_topup(&tu).unwrap_err().code(), "replay");
        // The chain goes on where it stopped.
        l.accept_topup(&topup(&c, 9, 20, 5)).unwrap();
        assert_eq!(
            NodeLedger::open(d.path()).unwrap().job(9).unwrap().accepted,
            25
        );
    }

    #[test]
    fn refusals_leave_state_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let c = Chain::mint([4; 20], 1000, 32, |_| {}).unwrap();
        let mut l = NodeLedger::create(d.path(), 1, SECRET).unwrap();
        l.accept_boot(&boot(&c, 1, 10), 0).unwrap();
        let before = std::fs::read(NodeLedger::ledger_path(d.path())).unwrap();
        // Skipping past the bound (51 > 50) even though the value is genuine.
        assert_eq!(
            l.accept_topup(&topup(&c, 1, 10, 51)).unwrap_err().code(),
            "skip-past-bound"
        );
        // Claiming fewer steps than the value really is.
        let mut t = TopUp::decode(&topup(&c, 1, 10, 20)).unwrap();
        t.count = 19;
        assert_eq!(
            l.accept_topup(&t.encode()).unwrap_err().code(),
            "chain-mismatch"
        );
        // A value from an older position (between last and anchor).
        let old = TopUp {
            node_id: 1,
            job_id: 1,
            count: 3,
            value: c.released_value(4).unwrap(),
        };
        assert_eq!(l.accept_topup(&old.encode()).unwrap_err().code(), "replay");
        // Another node's top-up.
        let mut other = TopUp::decode(&topup(&c, 1, 10, 5)).unwrap();
        other.node_id = 2;
        assert_eq!(
            l.accept_topup(&other.encode()).unwrap_err().code(),
            "wrong-node"
        );
        assert_eq!(
            l.accept_topup(&topup(&c, 2, 10, 5)).unwrap_err().code(),
            "unknown-job"
        );
        assert_eq!(
            std::fs::read(NodeLedger::ledger_path(d.path())).unwrap(),
            before
        );
        assert_eq!(l.job(1).unwrap().balance, 10);
    }

    #[test]
    fn consume_and_redeem() {
        let d = tempfile::tempdir().unwrap();
        let c = Chain::mint([5; 20], 1000, 32, |_| {}).unwrap();
        let mut l = NodeLedger::create(d.path(), 1, SECRET).unwrap();
        l.accept_boot(&boot(&c, 1, 10), 0).unwrap();
        assert_eq!(
            l.consume(1, 4).unwrap(),
            Debit {
                debited: 4,
                balance: 6,
                exhausted: false
            }
        );
        assert_eq!(
            l.consume(1, 8).unwrap(),
            Debit {
                debited: 6,
                balance: 0,
                exhausted: true
            }
        );
        l.accept_topup(&topup(&c, 1, 10, 10)).unwrap();
        l.consume(1, 3).unwrap();
        let (cert, bytes) = l.redeem(1, 77).unwrap();
        assert_eq!((cert.accepted, cert.balance), (20, 7));
        assert_eq!(Certificate::verify(&bytes, SECRET).unwrap(), cert);
        assert_eq!(cert.last, c.released_value(20).unwrap());
        assert_eq!(
            l.accept_topup(&topup(&c, 1, 20, 10)).unwrap_err().code(),
            "job-closed"
        );
        assert_eq!(l.consume(1, 1).unwrap_err().code(), "job-closed");
        let l2 = NodeLedger::open(d.path()).unwrap();
        assert!(l2.job(1).unwrap().closed);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Cut a chain into purchases of at most the bound, deliver them in a shuffled order
        /// with replays mixed in: the node accepts exactly the in-order ones, its balance is
        /// the sum of what it accepted, and it ends on s(n - total).
        #[test]
        fn ledger_accepts_exactly_the_chain_in_order(
            counts in proptest::collection::vec(1u32..=50, 1..12),
            order in proptest::collection::vec(0usize..64, 0..40),
        ) {
            let d = tempfile::tempdir().unwrap();
            let c = Chain::mint([6; 20], 1000, 32, |_| {}).unwrap();
            let mut l = NodeLedger::create(d.path(), 1, SECRET).unwrap();
            l.accept_boot(&boot(&c, 1, 10), 0).unwrap();
            let mut from = 10u64;
            let tops: Vec<Vec<u8>> = counts.iter().map(|&k| { let t = topup(&c, 1, from, k); from += k as u64; t }).collect();
            let mut next = 0usize;
            // Random submissions first (old, current or future ones)...
            for &o in &order {
                let i = o % tops.len();
                let r = l.accept_topup(&tops[i]);
                if i == next {
                    proptest::prop_assert!(r.is_ok());
                    next += 1;
                } else {
                    let code = r.unwrap_err().code();
                    if i < next {
                        proptest::prop_assert_eq!(code, "replay");
                    } else {
                        proptest::prop_assert!(code == "chain-mismatch" || code == "skip-past-bound", "{}", code);
                    }
                }
            }
            // ...then the rest in order.
            for t in &tops[next..] {
                l.accept_topup(t).unwrap();
            }
            let total: u64 = 10 + counts.iter().map(|&k| k as u64).sum::<u64>();
            let j = NodeLedger::open(d.path()).unwrap().job(1).unwrap().clone();
            proptest::prop_assert_eq!(j.balance, total);
            proptest::prop_assert_eq!(j.accepted, total);
            proptest::prop_assert_eq!(j.last, c.released_value(total).unwrap());
        }
    }

    /// A fresh ledger of node 1 and a chain minted from `seed`.
    fn ledger(seed: u8) -> (tempfile::TempDir, Chain, NodeLedger) {
        let d = tempfile::tempdir().unwrap();
        let c = Chain::mint([seed; 20], 1000, 32, |_| {}).unwrap();
        let l = NodeLedger::create(d.path(), 1, SECRET).unwrap();
        (d, c, l)
    }

    #[test]
    fn topup_as_a_guest_writes_it() {
        let (_d, c, mut l) = ledger(7);
        l.accept_boot(&boot(&c, 1, 10), 0).unwrap();
        let hex = crate::to_hex(&topup(&c, 1, 10, 5));
        // Whitespace is ignored (a guest's `echo` adds a newline).
        let spaced = format!(" {}\n{}\n", &hex[..40], &hex[40..]);
        assert_eq!(l.accept_topup_hex(1, &spaced).unwrap().balance, 15);
        assert_eq!(l.accept_topup_hex(1, &hex).unwrap_err(), "replay");
        let other = crate::to_hex(&topup(&c, 2, 15, 5));
        assert_eq!(l.accept_topup_hex(1, &other).unwrap_err(), "wrong-job");
        assert_eq!(l.accept_topup_hex(1, "zz").unwrap_err(), "bad-hex");
        assert_eq!(l.accept_topup_hex(1, &hex[..86]).unwrap_err(), "truncated");
        assert_eq!(
            l.accept_topup_hex(1, &"0".repeat(177)).unwrap_err(),
            "oversized"
        );
        assert_eq!(l.job(1).unwrap().balance, 15);
    }

    #[test]
    fn billing_carries_what_is_not_yet_a_whole_token() {
        let (_d, c, mut l) = ledger(8);
        l.accept_boot(&boot(&c, 1, 10), 0).unwrap();
        // 128 MiB at 256 MiB x s per token: half a token a second.
        let (mut owed, price) = (0, 256_000);
        let d1 = l.bill(1, &mut owed, 1_000, price).unwrap();
        assert_eq!((d1.debited, d1.balance, owed), (0, 10, 128_000));
        let d2 = l.bill(1, &mut owed, 3_000, price).unwrap();
        assert_eq!((d2.debited, d2.balance, owed), (2, 8, 0));
        let d3 = l.bill(1, &mut owed, 20_000, price).unwrap();
        assert_eq!((d3.debited, d3.balance, d3.exhausted), (8, 0, true));
        // A zero price bills nothing for free and does not divide by zero.
        assert!(l.bill(1, &mut owed, 1, 0).unwrap().exhausted);
        assert_eq!(
            l.bill(2, &mut owed, 1, price).unwrap_err().code(),
            "unknown-job"
        );
    }

    #[test]
    fn a_closed_job_keeps_its_certificate_for_the_customer() {
        let (d, c, mut l) = ledger(9);
        assert_eq!(l.kept_certificate(1).unwrap_err(), "unknown-job");
        l.accept_boot(&boot(&c, 1, 10), 0).unwrap();
        assert_eq!(l.kept_certificate(1).unwrap_err(), "job-open");
        let (cert, path) = l.close(1, 77).unwrap();
        assert_eq!(path, d.path().join("certs/1.lmrc"));
        let kept = l.kept_certificate(1).unwrap();
        assert_eq!(Certificate::verify(&kept, SECRET).unwrap(), cert);
        assert_eq!((cert.balance, cert.issued_at), (10, 77));
        assert_eq!(l.close(2, 77).unwrap_err().code(), "unknown-job");
        // A certificate that cannot be written is an error; the job is closed all the same.
        l.accept_boot(&boot(&c, 3, 10), 0).unwrap();
        std::fs::remove_dir_all(d.path().join("certs")).unwrap();
        std::fs::write(d.path().join("certs"), b"not a directory").unwrap();
        let e = l.close(3, 78).unwrap_err();
        assert!(e.to_string().starts_with("certificate NOT written"), "{e}");
        assert!(l.job(3).unwrap().closed);
        assert_eq!(l.kept_certificate(3).unwrap_err(), "unknown-job");
    }

    #[test]
    fn corrupt_ledger_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        NodeLedger::create(d.path(), 1, SECRET).unwrap();
        std::fs::write(NodeLedger::ledger_path(d.path()), b"{\"format\":1,").unwrap();
        assert_eq!(
            NodeLedger::open(d.path()).err().unwrap().code(),
            "corrupt-ledger"
        );
        assert_eq!(
            NodeLedger::create(d.path(), 1, SECRET)
                .err()
                .unwrap()
                .code(),
            "exists"
        );
    }
}
