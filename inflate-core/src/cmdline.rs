//! The loader's kernel command line (xl `extra=`): `ip=A.B.C.D netmask=A.B.C.D port=N
//! [gw=A.B.C.D]`. Unknown words are ignored so the toolstack may add its own.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub ip: [u8; 4],
    pub prefix_len: u8,
    pub port: u16,
    pub gateway: Option<[u8; 4]>,
    /// `handover-check`: after the hand-over, connect a fresh netfront to the same backend and
    /// disconnect it again, proving the backend was left ready for the next frontend.
    pub handover_check: bool,
    /// `commit-timeout=S`: how long the loader waits for COMMIT/ABORT after `ready` (1..=3600,
    /// default 30).
    pub commit_timeout_s: u32,
    /// `restore-dry-run`: after phase A, apply the M2P updates, pins, GDT and user L4 for real,
    /// print Xen's answers and undo them, before reporting `ready`.
    pub restore_dry_run: bool,
}

pub const DEFAULT_COMMIT_TIMEOUT_S: u32 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdlineError {
    Missing(&'static str),
    BadAddress(&'static str),
    BadNetmask,
    BadPort,
    BadTimeout,
}

impl core::fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CmdlineError::Missing(k) => write!(f, "command line lacks {k}="),
            CmdlineError::BadAddress(k) => write!(f, "{k}= is not a dotted IPv4 address"),
            CmdlineError::BadNetmask => write!(f, "netmask= is not a contiguous IPv4 netmask"),
            CmdlineError::BadPort => write!(f, "port= is not a number in 1..=65535"),
            CmdlineError::BadTimeout => write!(f, "commit-timeout= is not a number in 1..=3600"),
        }
    }
}

pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut it = s.split('.');
    for o in out.iter_mut() {
        let part = it.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = part.parse().ok()?;
    }
    if it.next().is_some() {
        None
    } else {
        Some(out)
    }
}

/// Prefix length of a contiguous netmask (255.255.255.0 -> 24).
pub fn netmask_prefix(m: [u8; 4]) -> Option<u8> {
    let v = u32::from_be_bytes(m);
    let ones = v.leading_ones();
    if v.checked_shl(ones).unwrap_or(0) != 0 {
        None
    } else {
        Some(ones as u8)
    }
}

pub fn parse(cmdline: &str) -> Result<NetConfig, CmdlineError> {
    let (mut ip, mut mask, mut port, mut gw) = (None, None, None, None);
    let mut commit_timeout_s = DEFAULT_COMMIT_TIMEOUT_S;
    let restore_dry_run = cmdline
        .split_ascii_whitespace()
        .any(|w| w == "restore-dry-run");
    let handover_check = cmdline
        .split_ascii_whitespace()
        .any(|w| w == "handover-check");
    for word in cmdline.split_ascii_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        match k {
            "ip" => ip = Some(parse_ipv4(v).ok_or(CmdlineError::BadAddress("ip"))?),
            "netmask" => {
                let m = parse_ipv4(v).ok_or(CmdlineError::BadAddress("netmask"))?;
                mask = Some(netmask_prefix(m).ok_or(CmdlineError::BadNetmask)?);
            }
            "port" => {
                let p: u16 = v.parse().map_err(|_| CmdlineError::BadPort)?;
                if p == 0 {
                    return Err(CmdlineError::BadPort);
                }
                port = Some(p);
            }
            "gw" => gw = Some(parse_ipv4(v).ok_or(CmdlineError::BadAddress("gw"))?),
            "commit-timeout" => {
                commit_timeout_s = v
                    .parse()
                    .ok()
                    .filter(|t| (1..=3600).contains(t))
                    .ok_or(CmdlineError::BadTimeout)?;
            }
            _ => {}
        }
    }
    Ok(NetConfig {
        ip: ip.ok_or(CmdlineError::Missing("ip"))?,
        prefix_len: mask.ok_or(CmdlineError::Missing("netmask"))?,
        port: port.ok_or(CmdlineError::Missing("port"))?,
        gateway: gw,
        handover_check,
        commit_timeout_s,
        restore_dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_line() {
        let c =
            parse("console=hvc0 ip=10.0.0.50 netmask=255.255.255.0 port=7000 gw=10.0.0.1").unwrap();
        assert_eq!(
            c,
            NetConfig {
                ip: [10, 0, 0, 50],
                prefix_len: 24,
                port: 7000,
                gateway: Some([10, 0, 0, 1]),
                handover_check: false,
                commit_timeout_s: DEFAULT_COMMIT_TIMEOUT_S,
                restore_dry_run: false,
            }
        );
        let c =
            parse("ip=1.2.3.4 netmask=255.0.0.0 port=9 commit-timeout=5 restore-dry-run").unwrap();
        assert_eq!((c.commit_timeout_s, c.restore_dry_run), (5, true));
        for bad in ["0", "3601", "x", ""] {
            assert_eq!(
                parse(&format!(
                    "ip=1.2.3.4 netmask=255.0.0.0 port=9 commit-timeout={bad}"
                )),
                Err(CmdlineError::BadTimeout)
            );
        }
        assert!(
            parse("ip=1.2.3.4 netmask=255.0.0.0 port=9 handover-check")
                .unwrap()
                .handover_check
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(
            parse("ip=10.0.0 netmask=255.0.0.0 port=1"),
            Err(CmdlineError::BadAddress("ip"))
        );
        assert_eq!(
            parse("ip=10.0.0.300 netmask=255.0.0.0 port=1"),
            Err(CmdlineError::BadAddress("ip"))
        );
        assert_eq!(
            parse("ip=10.0.0.1 netmask=255.0.255.0 port=1"),
            Err(CmdlineError::BadNetmask)
        );
        assert_eq!(
            parse("ip=10.0.0.1 netmask=255.0.0.0 port=0"),
            Err(CmdlineError::BadPort)
        );
        assert_eq!(
            parse("ip=10.0.0.1 netmask=255.0.0.0 port=70000"),
            Err(CmdlineError::BadPort)
        );
        assert_eq!(
            parse("ip=10.0.0.1 port=5"),
            Err(CmdlineError::Missing("netmask"))
        );
        assert_eq!(parse(""), Err(CmdlineError::Missing("ip")));
    }

    #[test]
    fn netmask_prefixes() {
        assert_eq!(netmask_prefix([0, 0, 0, 0]), Some(0));
        assert_eq!(netmask_prefix([255, 255, 255, 255]), Some(32));
        assert_eq!(netmask_prefix([255, 255, 254, 0]), Some(23));
        assert_eq!(netmask_prefix([0, 255, 255, 0]), None);
    }
}
