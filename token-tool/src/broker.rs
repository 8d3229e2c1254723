//! The broker ledger in SQLite: node secrets, chains, sales, refunds.
//!
//! A sale is one IMMEDIATE transaction: look up the payment reference, compute the value,
//! insert the sale row and advance the chain's `released` counter, commit. A crash before
//! the commit leaves nothing (SQLite's journal rolls it back); a crash after it leaves a
//! sale the customer can fetch again by repeating the request with the same payment
//! reference, which returns the recorded sale instead of releasing another value. So no
//! value is released twice and none that was paid for is lost.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::chain::{Chain, Value};
use crate::error::TokenError;
use crate::wallet::Purchase;
use crate::wire::{BootToken, Certificate, Extent};

/// Environment variable naming a step of a sale at which the process announces itself on
/// stderr and stops until killed. Used by the crash tests; unset in normal use.
pub const CRASH_POINT_ENV: &str = "TOKEN_TOOL_CRASH_POINT";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("broker database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("unknown node {0}")]
    UnknownNode(u32),
    #[error("node {0} already exists")]
    NodeExists(u32),
    #[error("unknown job {0}")]
    UnknownJob(u64),
    #[error("chain of job {job} has {left} values left, cannot sell {count}")]
    ChainExhausted { job: u64, left: u64, count: u64 },
    #[error("sale of {count} exceeds the top-up bound {bound} of job {job}")]
    SaleTooLarge { job: u64, count: u64, bound: u32 },
    #[error("payment reference {0:?} was already used for job {1}")]
    PaymentRefOtherJob(String, u64),
    #[error("job {0} has no sale yet: sell tokens before issuing its boot token")]
    NothingSold(u64),
    #[error("certificate does not match the chain of job {0}")]
    CertMismatch(u64),
    #[error("job {0} was already refunded")]
    AlreadyRefunded(u64),
    #[error("not a broker database (run `broker init` first): {0}")]
    NotInitialised(String),
}

impl BrokerError {
    pub fn code(&self) -> &'static str {
        match self {
            BrokerError::Token(t) => t.code(),
            BrokerError::Db(_) => "db",
            BrokerError::UnknownNode(_) => "unknown-node",
            BrokerError::NodeExists(_) => "node-exists",
            BrokerError::UnknownJob(_) => "unknown-job",
            BrokerError::ChainExhausted { .. } => "chain-exhausted",
            BrokerError::SaleTooLarge { .. } => "sale-too-large",
            BrokerError::PaymentRefOtherJob(..) => "payment-ref-reused",
            BrokerError::NothingSold(_) => "nothing-sold",
            BrokerError::CertMismatch(_) => "cert-mismatch",
            BrokerError::AlreadyRefunded(_) => "already-refunded",
            BrokerError::NotInitialised(_) => "not-initialised",
        }
    }
    /// Refusals of the request (vs. failures of the database or the environment).
    pub fn is_refusal(&self) -> bool {
        match self {
            BrokerError::Token(t) => t.is_refusal(),
            BrokerError::Db(_) | BrokerError::NotInitialised(_) => false,
            _ => true,
        }
    }
}

type Result<T> = std::result::Result<T, BrokerError>;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Sale {
    pub sale_id: i64,
    pub job_id: u64,
    pub node_id: u32,
    pub payment_ref: String,
    pub from: u64,
    pub count: u64,
    #[serde(with = "crate::wire::hex20")]
    pub value: Value,
    /// True when this request returned an earlier sale with the same payment reference.
    pub repeated: bool,
}

impl Sale {
    pub fn purchase(&self) -> Purchase {
        Purchase {
            job_id: self.job_id,
            node_id: self.node_id,
            from: self.from,
            count: self.count as u32,
            value: self.value,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct JobInfo {
    pub job_id: u64,
    pub node_id: u32,
    pub length: u64,
    pub step: u64,
    pub released: u64,
    pub max_topup: u32,
    #[serde(with = "crate::wire::hex20")]
    pub anchor: Value,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Refund {
    pub job_id: u64,
    /// Unspent balance on the node plus values bought but never delivered to it.
    pub tokens: u64,
    pub unspent: u64,
    pub undelivered: u64,
}

/// What the boot token grants besides the chain.
#[derive(Clone, Debug)]
pub struct BootGrant {
    pub memory_mib: u32,
    pub vcpus: u16,
    pub loader_sha1: [u8; 20],
    pub extents: Vec<Extent>,
    pub expiry: u64,
}

pub struct Broker {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node_id INTEGER PRIMARY KEY,
    secret BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chains (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id INTEGER NOT NULL REFERENCES nodes(node_id),
    length INTEGER NOT NULL,
    step INTEGER NOT NULL,
    checkpoints BLOB NOT NULL,
    anchor BLOB NOT NULL,
    max_topup INTEGER NOT NULL,
    released INTEGER NOT NULL DEFAULT 0 CHECK (released >= 0 AND released <= length),
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sales (
    sale_id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES chains(job_id),
    payment_ref TEXT NOT NULL UNIQUE,
    first_pos INTEGER NOT NULL,
    count INTEGER NOT NULL CHECK (count > 0),
    value BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (job_id, first_pos)
);
CREATE TABLE IF NOT EXISTS refunds (
    job_id INTEGER PRIMARY KEY REFERENCES chains(job_id),
    tokens INTEGER NOT NULL,
    certificate BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
";

fn crash_point(name: &str) {
    if std::env::var(CRASH_POINT_ENV).ok().as_deref() == Some(name) {
        use std::io::Write;
        let mut e = std::io::stderr();
        let _ = writeln!(e, "CRASH-POINT {name}");
        let _ = e.flush();
        // Wait to be killed: the test sends SIGKILL once it has read the line above.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

fn to_value(b: Vec<u8>) -> Result<Value> {
    b.as_slice().try_into().map_err(|_| {
        TokenError::InvalidField {
            field: "stored value",
            reason: "not 20 bytes",
        }
        .into()
    })
}

impl Broker {
    fn connect(path: &Path) -> Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // FULL: a committed sale survives power loss, not only a process crash.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
        )?;
        Ok(conn)
    }

    /// Create (or upgrade in place) a broker database.
    pub fn init(path: &Path) -> Result<Broker> {
        let conn = Self::connect(path)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('format', '1')",
            [],
        )?;
        Ok(Broker { conn })
    }

    pub fn open(path: &Path) -> Result<Broker> {
        if !path.exists() {
            return Err(BrokerError::NotInitialised(path.display().to_string()));
        }
        let conn = Self::connect(path)?;
        let fmt: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|_| BrokerError::NotInitialised(path.display().to_string()))?;
        if fmt.as_deref() != Some("1") {
            return Err(BrokerError::NotInitialised(path.display().to_string()));
        }
        Ok(Broker { conn })
    }

    /// Register a node and generate the secret it shares with the broker.
    pub fn add_node(&mut self, node_id: u32) -> Result<Vec<u8>> {
        let secret = crate::random_bytes::<20>()?.to_vec();
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO nodes (node_id, secret, created_at) VALUES (?1, ?2, ?3)",
            params![node_id, secret, crate::unix_now() as i64],
        )?;
        if n == 0 {
            return Err(BrokerError::NodeExists(node_id));
        }
        Ok(secret)
    }

    pub fn node_secret(&self, node_id: u32) -> Result<Vec<u8>> {
        self.conn
            .query_row(
                "SELECT secret FROM nodes WHERE node_id = ?1",
                [node_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(BrokerError::UnknownNode(node_id))
    }

    /// Mint a chain for a new job on `node_id`; returns the job.
    pub fn mint(
        &mut self,
        node_id: u32,
        length: u64,
        max_topup: u32,
        progress: impl FnMut(u64),
    ) -> Result<JobInfo> {
        self.node_secret(node_id)?;
        if max_topup == 0 {
            return Err(TokenError::InvalidField {
                field: "max_topup",
                reason: "must be at least 1",
            }
            .into());
        }
        let seed = crate::random_bytes::<20>()?;
        let chain = Chain::mint(seed, length, Chain::default_step(length), progress)?;
        self.conn.execute(
            "INSERT INTO chains (node_id, length, step, checkpoints, anchor, max_topup, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                node_id,
                length as i64,
                chain.step() as i64,
                chain.checkpoints_blob(),
                chain.anchor().to_vec(),
                max_topup,
                crate::unix_now() as i64
            ],
        )?;
        let job_id = self.conn.last_insert_rowid() as u64;
        self.job(job_id)
    }

    pub fn job(&self, job_id: u64) -> Result<JobInfo> {
        let row = self
            .conn
            .query_row(
                "SELECT node_id, length, step, released, max_topup, anchor FROM chains WHERE job_id = ?1",
                [job_id as i64],
                |r| {
                    Ok((
                        r.get::<_, u32>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, u32>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                    ))
                },
            )
            .optional()?
            .ok_or(BrokerError::UnknownJob(job_id))?;
        Ok(JobInfo {
            job_id,
            node_id: row.0,
            length: row.1 as u64,
            step: row.2 as u64,
            released: row.3 as u64,
            max_topup: row.4,
            anchor: to_value(row.5)?,
        })
    }

    pub fn jobs(&self) -> Result<Vec<JobInfo>> {
        let ids: Vec<i64> = self
            .conn
            .prepare("SELECT job_id FROM chains ORDER BY job_id")?
            .query_map([], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        ids.into_iter().map(|id| self.job(id as u64)).collect()
    }

    fn chain(conn: &Connection, job_id: u64) -> Result<Chain> {
        let (len, step, blob, anchor): (i64, i64, Vec<u8>, Vec<u8>) = conn
            .query_row(
                "SELECT length, step, checkpoints, anchor FROM chains WHERE job_id = ?1",
                [job_id as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?
            .ok_or(BrokerError::UnknownJob(job_id))?;
        Ok(Chain::from_parts(
            len as u64,
            step as u64,
            Chain::checkpoints_from_blob(&blob)?,
            to_value(anchor)?,
        )?)
    }

    pub fn sales(&self, job_id: u64) -> Result<Vec<Sale>> {
        let node_id = self.job(job_id)?.node_id;
        let mut st = self.conn.prepare(
            "SELECT sale_id, payment_ref, first_pos, count, value FROM sales WHERE job_id = ?1 ORDER BY first_pos",
        )?;
        let rows = st.query_map([job_id as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (sale_id, payment_ref, from, count, value) = row?;
            out.push(Sale {
                sale_id,
                job_id,
                node_id,
                payment_ref,
                from: from as u64,
                count: count as u64,
                value: to_value(value)?,
                repeated: false,
            });
        }
        Ok(out)
    }

    /// Sell `count` tokens of job `job_id` against the payment `payment_ref` (the key that
    /// makes a retried request idempotent).
    pub fn sell(&mut self, job_id: u64, count: u64, payment_ref: &str) -> Result<Sale> {
        if count == 0 {
            return Err(TokenError::InvalidField {
                field: "count",
                reason: "must be at least 1",
            }
            .into());
        }
        if payment_ref.is_empty() {
            return Err(TokenError::InvalidField {
                field: "payment reference",
                reason: "must not be empty",
            }
            .into());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        crash_point("sale-begin");
        let earlier: Option<(i64, i64, i64, i64, Vec<u8>)> = tx
            .query_row(
                "SELECT sale_id, job_id, first_pos, count, value FROM sales WHERE payment_ref = ?1",
                [payment_ref],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let (node_id, length, released, max_topup): (u32, i64, i64, u32) = tx
            .query_row(
                "SELECT node_id, length, released, max_topup FROM chains WHERE job_id = ?1",
                [job_id as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?
            .ok_or(BrokerError::UnknownJob(job_id))?;
        if let Some((sale_id, sjob, from, scount, value)) = earlier {
            if sjob as u64 != job_id {
                return Err(BrokerError::PaymentRefOtherJob(
                    payment_ref.into(),
                    sjob as u64,
                ));
            }
            return Ok(Sale {
                sale_id,
                job_id,
                node_id,
                payment_ref: payment_ref.into(),
                from: from as u64,
                count: scount as u64,
                value: to_value(value)?,
                repeated: true,
            });
        }
        let (length, released) = (length as u64, released as u64);
        // The schema's CHECK keeps released <= length; saturate anyway rather than trust it.
        let left = length.saturating_sub(released);
        // The first sale goes into the boot token (any size); later ones are top-ups and
        // must fit the node's bound.
        if released > 0 && count > max_topup as u64 {
            return Err(BrokerError::SaleTooLarge {
                job: job_id,
                count,
                bound: max_topup,
            });
        }
        if count > left {
            return Err(BrokerError::ChainExhausted {
                job: job_id,
                left,
                count,
            });
        }
        let chain = Self::chain(&tx, job_id)?;
        let value = chain
            .released_value(released + count)
            .ok_or(BrokerError::ChainExhausted {
                job: job_id,
                left,
                count,
            })?;
        crash_point("sale-computed");
        tx.execute(
            "INSERT INTO sales (job_id, payment_ref, first_pos, count, value, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![job_id as i64, payment_ref, released as i64, count as i64, value.to_vec(), crate::unix_now() as i64],
        )?;
        let sale_id = tx.last_insert_rowid();
        crash_point("sale-inserted");
        let n = tx.execute(
            "UPDATE chains SET released = ?1 WHERE job_id = ?2 AND released = ?3",
            params![(released + count) as i64, job_id as i64, released as i64],
        )?;
        if n != 1 {
            return Err(BrokerError::Db(rusqlite::Error::StatementChangedRows(n)));
        }
        crash_point("sale-updated");
        tx.commit()?;
        crash_point("sale-committed");
        Ok(Sale {
            sale_id,
            job_id,
            node_id,
            payment_ref: payment_ref.into(),
            from: released,
            count,
            value,
            repeated: false,
        })
    }

    /// The boot token for a job: anchor s(n), first = the last value released so far, count
    /// = all tokens sold so far.
    pub fn boot_token(&self, job_id: u64, grant: &BootGrant) -> Result<(BootToken, Vec<u8>)> {
        let job = self.job(job_id)?;
        if job.released == 0 {
            return Err(BrokerError::NothingSold(job_id));
        }
        let count = u32::try_from(job.released).map_err(|_| TokenError::InvalidField {
            field: "count",
            reason: "more than 2^32 tokens",
        })?;
        let chain = Self::chain(&self.conn, job_id)?;
        let first = chain
            .released_value(job.released)
            .ok_or(BrokerError::UnknownJob(job_id))?;
        let t = BootToken {
            vcpus: grant.vcpus,
            node_id: job.node_id,
            memory_mib: grant.memory_mib,
            job_id,
            expiry: grant.expiry,
            count,
            max_topup: job.max_topup,
            nonce: crate::random_bytes()?,
            anchor: job.anchor,
            first,
            loader_sha1: grant.loader_sha1,
            extents: grant.extents.clone(),
        };
        let secret = self.node_secret(job.node_id)?;
        let bytes = t.encode(&secret)?;
        Ok((t, bytes))
    }

    /// Refund a redemption certificate, once per job.
    pub fn redeem(&mut self, cert_bytes: &[u8]) -> Result<Refund> {
        let (unverified, _) = Certificate::decode_unverified(cert_bytes)?;
        let job = self.job(unverified.job_id)?;
        if job.node_id != unverified.node_id {
            return Err(TokenError::WrongNode {
                token_node: unverified.node_id,
                this_node: job.node_id,
            }
            .into());
        }
        let secret = self.node_secret(job.node_id)?;
        let cert = Certificate::verify(cert_bytes, &secret)?;
        // The node must have accepted values the broker actually released, ending at `last`.
        if cert.accepted == 0 || cert.accepted > job.released {
            return Err(BrokerError::CertMismatch(job.job_id));
        }
        let chain = Self::chain(&self.conn, job.job_id)?;
        // Regenerated from a checkpoint: at most sqrt(n) hashes, not `accepted`.
        if chain.released_value(cert.accepted) != Some(cert.last) {
            return Err(BrokerError::CertMismatch(job.job_id));
        }
        let undelivered = job.released.saturating_sub(cert.accepted);
        let tokens = cert.balance + undelivered;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO refunds (job_id, tokens, certificate, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![job.job_id as i64, tokens as i64, cert_bytes, crate::unix_now() as i64],
        )?;
        if n == 0 {
            return Err(BrokerError::AlreadyRefunded(job.job_id));
        }
        // Close the chain: nothing more can be sold on a refunded job.
        tx.execute(
            "UPDATE chains SET released = length WHERE job_id = ?1",
            [job.job_id as i64],
        )?;
        tx.commit()?;
        Ok(Refund {
            job_id: job.job_id,
            tokens,
            unspent: cert.balance,
            undelivered,
        })
    }

    /// Consistency check used by tests and `broker check`: for each job, the sales tile
    /// positions 0..released without gaps or overlaps and each value is s(n - end).
    pub fn check(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        for job in self.jobs()? {
            let refunded: bool = self
                .conn
                .query_row(
                    "SELECT 1 FROM refunds WHERE job_id = ?1",
                    [job.job_id as i64],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            let chain = Self::chain(&self.conn, job.job_id)?;
            let mut pos = 0;
            for s in self.sales(job.job_id)? {
                if s.from != pos {
                    problems.push(format!(
                        "job {}: sale {} starts at {} not {}",
                        job.job_id, s.sale_id, s.from, pos
                    ));
                }
                pos = s.from + s.count;
                if chain.released_value(pos) != Some(s.value) {
                    problems.push(format!(
                        "job {}: sale {} value is not s(n-{})",
                        job.job_id, s.sale_id, pos
                    ));
                }
            }
            if pos != job.released && !refunded {
                problems.push(format!(
                    "job {}: released {} but sales cover {}",
                    job.job_id, job.released, pos
                ));
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::iterate;

    fn grant() -> BootGrant {
        BootGrant {
            memory_mib: 64,
            vcpus: 1,
            loader_sha1: [0; 20],
            extents: vec![],
            expiry: u64::MAX,
        }
    }

    #[test]
    fn sales_are_idempotent_and_contiguous() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Broker::init(&d.path().join("b.db")).unwrap();
        b.add_node(1).unwrap();
        assert_eq!(b.add_node(1).unwrap_err().code(), "node-exists");
        let job = b.mint(1, 1000, 20, |_| {}).unwrap();
        assert_eq!(
            b.boot_token(job.job_id, &grant()).unwrap_err().code(),
            "nothing-sold"
        );
        let s1 = b.sell(job.job_id, 10, "p1").unwrap();
        let again = b.sell(job.job_id, 10, "p1").unwrap();
        assert!(again.repeated);
        assert_eq!(again.value, s1.value);
        let s2 = b.sell(job.job_id, 10, "p2").unwrap();
        assert_eq!(s2.from, 10);
        assert_eq!(iterate(&s2.value, 10), s1.value);
        assert_eq!(
            b.sell(job.job_id, 21, "p3").unwrap_err().code(),
            "sale-too-large"
        );
        assert_eq!(b.job(job.job_id).unwrap().released, 20);
        assert!(b.check().unwrap().is_empty());
        let (t, _) = b.boot_token(job.job_id, &grant()).unwrap();
        assert_eq!((t.count, t.first), (20, s2.value));
    }

    #[test]
    fn chain_exhaustion_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Broker::init(&d.path().join("b.db")).unwrap();
        b.add_node(1).unwrap();
        let job = b.mint(1, 25, 20, |_| {}).unwrap();
        b.sell(job.job_id, 20, "a").unwrap();
        assert_eq!(
            b.sell(job.job_id, 6, "b").unwrap_err().code(),
            "chain-exhausted"
        );
        let last = b.sell(job.job_id, 5, "c").unwrap();
        assert_eq!(iterate(&last.value, 25), job.anchor);
    }
}
