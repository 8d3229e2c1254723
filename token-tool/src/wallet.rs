//! The customer's wallet: the values bought from the broker, and which of them the node
//! has been sent. A JSON file, replaced atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::chain::Value;
use crate::error::TokenError;
use crate::fsutil::atomic_write;
use crate::wire::{hex20, BootToken, TopUp};

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("wallet {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("wallet {path} is corrupt: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{0}")]
    State(String),
}

/// One purchase as the broker reports it: `value` = s(n - from - count).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Purchase {
    pub job_id: u64,
    pub node_id: u32,
    /// Tokens sold on this chain before this purchase.
    pub from: u64,
    pub count: u32,
    #[serde(with = "hex20")]
    pub value: Value,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobWallet {
    pub node_id: u32,
    /// Tokens from the top of the chain already handed to the node.
    pub delivered: u64,
    pub purchases: Vec<Purchase>,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Wallet {
    pub jobs: BTreeMap<u64, JobWallet>,
}

impl Wallet {
    pub fn load(path: &Path) -> Result<Wallet, WalletError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| WalletError::Corrupt {
                path: path.to_path_buf(),
                msg: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Wallet::default()),
            Err(source) => Err(WalletError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), WalletError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| WalletError::Corrupt {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        atomic_write(path, &json, 0o600).map_err(|source| WalletError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Keep a purchase (idempotent: the same purchase twice is kept once).
    pub fn add(&mut self, p: Purchase) -> Result<(), WalletError> {
        let j = self.jobs.entry(p.job_id).or_insert_with(|| JobWallet {
            node_id: p.node_id,
            ..Default::default()
        });
        if j.node_id != p.node_id {
            return Err(WalletError::State(format!(
                "job {} belongs to node {}, not {}",
                p.job_id, j.node_id, p.node_id
            )));
        }
        if !j.purchases.contains(&p) {
            if j.purchases.iter().any(|q| q.from == p.from) {
                return Err(WalletError::State(format!(
                    "job {}: a different purchase at position {} is already kept",
                    p.job_id, p.from
                )));
            }
            j.purchases.push(p);
            j.purchases.sort_by_key(|q| q.from);
        }
        Ok(())
    }

    /// Record that a boot token delivered its first `count` tokens.
    pub fn booted(&mut self, token: &[u8]) -> Result<u64, WalletError> {
        let (t, _) = BootToken::decode_unverified(token)?;
        let j = self.jobs.entry(t.job_id).or_insert_with(|| JobWallet {
            node_id: t.node_id,
            ..Default::default()
        });
        j.delivered = j.delivered.max(t.count as u64);
        Ok(t.job_id)
    }

    /// The top-up sent last for `job` again (it was lost, or the node was down), without
    /// changing what counts as delivered.
    pub fn last_topup(&self, job: u64) -> Result<TopUp, WalletError> {
        let j = self.jobs.get(&job).ok_or(TokenError::UnknownJob { job })?;
        let p = j
            .purchases
            .iter()
            .find(|p| p.from + p.count as u64 == j.delivered)
            .ok_or_else(|| WalletError::State(format!("job {job}: no top-up sent yet")))?;
        Ok(TopUp {
            node_id: p.node_id,
            job_id: job,
            count: p.count,
            value: p.value,
        })
    }

    /// The next top-up for `job`: the purchase that starts where delivery stopped. Marks it
    /// delivered.
    pub fn next_topup(&mut self, job: u64) -> Result<TopUp, WalletError> {
        let j = self
            .jobs
            .get_mut(&job)
            .ok_or(TokenError::UnknownJob { job })?;
        let p = j
            .purchases
            .iter()
            .find(|p| p.from == j.delivered)
            .ok_or_else(|| {
                WalletError::State(format!(
                    "job {job}: no purchase left to send (delivered {})",
                    j.delivered
                ))
            })?
            .clone();
        j.delivered = p.from + p.count as u64;
        Ok(TopUp {
            node_id: p.node_id,
            job_id: job,
            count: p.count,
            value: p.value,
        })
    }
}
