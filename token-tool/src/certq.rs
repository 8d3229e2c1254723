//! `token-tool certificate`: the customer fetches the redemption certificate of an ended job
//! from the node by ICMP (docs/packetd.md §2.1): an echo request carrying a certificate query,
//! resent until the node answers with the certificate, or says why not.

use std::net::Ipv4Addr;
use std::time::Duration;

use token_tool::bootproto::{BootReply, Status};
use token_tool::Certificate;

use crate::customer::NotAccepted;

/// Ask `host` for job `job`'s certificate every `retry` until it answers or `timeout` passes.
/// A node that says the job still runs is asked again. Returns the certificate's bytes.
pub fn fetch(
    host: Ipv4Addr,
    job: u64,
    retry: Duration,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let what = format!("certificate for job {job}");
    let query = token_tool::bootproto::cert_query(job);
    let (answer, _) = crate::echo::exchange(host, &query, retry, timeout, &what, |p| {
        if Certificate::decode_unverified(p).is_ok_and(|(c, _)| c.job_id == job) {
            return Some(Ok(p.to_vec()));
        }
        match BootReply::decode(p) {
            Ok(r) if r.job_id == job && r.status != Status::Later => Some(Err(NotAccepted {
                host,
                status: r.status,
                reason: r.reason_name(),
            })),
            _ => None,
        }
    })?;
    Ok(answer?)
}
