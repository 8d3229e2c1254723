//! `checkpointd loader-config`: the xl config of an inflate-loader domain that can take this
//! guest (docs/migrate.md "Loader domain"). Everything comes from what the guest can see:
//! its memory and vCPUs (/dev/checkpoint, sysfs), its MAC (sysfs), its xl name and its vif's
//! bridge (xenstore, through the xenbus device).

use crate::arrival::{fmt_mac, parse_mac};
use std::fs::OpenOptions;
use std::io::{self, Read, Write};

/// Xenstore wire message types (Xen's public/io/xs_wire.h).
const XS_READ: u32 = 2;
const XS_ERROR: u32 = 16;
/// Xenstore values are at most 4096 bytes.
const XS_MAX: usize = 4096;

/// A xenstore client over the kernel's xenbus device (one request at a time).
pub struct Xenstore {
    f: std::fs::File,
    req: u32,
}

impl Xenstore {
    pub fn open() -> io::Result<Xenstore> {
        let f = ["/dev/xen/xenbus", "/proc/xen/xenbus"]
            .iter()
            .find_map(|p| OpenOptions::new().read(true).write(true).open(p).ok())
            .ok_or_else(|| io::Error::other("no xenbus device (/dev/xen/xenbus)"))?;
        Ok(Xenstore { f, req: 1 })
    }

    /// Read `path` (relative paths are under this domain's /local/domain/<id>).
    pub fn read(&mut self, path: &str) -> io::Result<String> {
        self.req += 1;
        let mut m = encode_request(XS_READ, self.req, path);
        self.f.write_all(&m)?;
        m.clear();
        let mut hdr = [0u8; 16];
        self.f.read_exact(&mut hdr)?;
        let (ty, len) = parse_reply_header(&hdr)?;
        let mut body = vec![0u8; len];
        self.f.read_exact(&mut body)?;
        let text = String::from_utf8_lossy(&body)
            .trim_end_matches('\0')
            .to_string();
        if ty == XS_ERROR {
            return Err(io::Error::other(format!("xenstore read {path}: {text}")));
        }
        Ok(text)
    }
}

fn encode_request(ty: u32, req: u32, path: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + path.len() + 1);
    for v in [ty, req, 0, path.len() as u32 + 1] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(path.as_bytes());
    m.push(0);
    m
}

fn parse_reply_header(h: &[u8; 16]) -> io::Result<(u32, usize)> {
    let ty = u32::from_le_bytes(h[0..4].try_into().unwrap());
    let len = u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize;
    if len > XS_MAX {
        return Err(io::Error::other(format!(
            "xenstore reply of {len} bytes (limit {XS_MAX})"
        )));
    }
    Ok((ty, len))
}

/// What the config is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderSpec {
    pub name: String,
    pub kernel: String,
    pub memory_mib: u64,
    pub maxmem_mib: u64,
    pub vcpus: u32,
    pub mac: [u8; 6],
    pub bridge: String,
    pub ip: String,
    pub netmask: String,
    pub port: u16,
    pub gateway: Option<String>,
}

pub fn render(s: &LoaderSpec) -> String {
    let gw = s
        .gateway
        .as_ref()
        .map_or(String::new(), |g| format!(" gw={g}"));
    format!(
        "# inflate-loader domain for a self-migrating guest (checkpointd loader-config).\n\
         # Create it on the destination host with `xl create FILE`, then run\n\
         # `checkpointd migrate {ip}:{port}` in the guest.\n\
         name = \"{name}\"\n\
         type = \"pv\"\n\
         kernel = \"{kernel}\"\n\
         extra = \"ip={ip} netmask={netmask} port={port}{gw}\"\n\
         memory = {mem}\n\
         maxmem = {maxmem}\n\
         vcpus = {vcpus}\n\
         vif = [ \"bridge={bridge},mac={mac}\" ]\n\
         on_poweroff = \"destroy\"\n\
         on_reboot = \"destroy\"\n\
         on_crash = \"preserve\"\n",
        name = s.name,
        kernel = s.kernel,
        ip = s.ip,
        netmask = s.netmask,
        port = s.port,
        mem = s.memory_mib,
        maxmem = s.maxmem_mib,
        vcpus = s.vcpus,
        bridge = s.bridge,
        mac = fmt_mac(&s.mac),
    )
}

/// The guest's first vif: (MAC, bridge). The MAC is the one netfront shows; the bridge is
/// what the backend was configured with (readable by the frontend).
pub fn guest_vif(xs: &mut Xenstore) -> io::Result<([u8; 6], String)> {
    let mac_s = xs.read("device/vif/0/mac")?;
    let mac = parse_mac(&mac_s)
        .ok_or_else(|| io::Error::other(format!("bad MAC in xenstore: {mac_s:?}")))?;
    let backend = xs.read("device/vif/0/backend")?;
    let bridge = xs.read(&format!("{backend}/bridge"))?;
    Ok((mac, bridge))
}

/// Possible CPUs of this guest ("0" or "0-3" style list in sysfs).
pub fn possible_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| count_cpu_list(s.trim()))
        .unwrap_or(1)
}

fn count_cpu_list(s: &str) -> Option<u32> {
    let mut n = 0;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => n += b.parse::<u32>().ok()? - a.parse::<u32>().ok()? + 1,
            None => {
                part.parse::<u32>().ok()?;
                n += 1
            }
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_text_is_complete() {
        let s = LoaderSpec {
            name: "g-dest".into(),
            kernel: "/k/inflate-loader".into(),
            memory_mib: 135,
            maxmem_mib: 135,
            vcpus: 1,
            mac: [0, 0x16, 0x3e, 0x4c, 0, 0x79],
            bridge: "xenbr0".into(),
            ip: "10.0.0.61".into(),
            netmask: "255.255.255.0".into(),
            port: 7000,
            gateway: None,
        };
        let t = render(&s);
        for want in [
            "name = \"g-dest\"",
            "kernel = \"/k/inflate-loader\"",
            "extra = \"ip=10.0.0.61 netmask=255.255.255.0 port=7000\"",
            "memory = 135",
            "maxmem = 135",
            "vif = [ \"bridge=xenbr0,mac=00:16:3e:4c:00:79\" ]",
        ] {
            assert!(t.contains(want), "{want} missing in\n{t}");
        }
    }

    #[test]
    fn xenstore_wire() {
        let m = encode_request(XS_READ, 5, "name");
        assert_eq!(&m[..16], &[2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(&m[16..], b"name\0");
        let mut h = [0u8; 16];
        h[12..16].copy_from_slice(&5000u32.to_le_bytes());
        assert!(parse_reply_header(&h).is_err(), "oversized reply refused");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3"), Some(4));
        assert_eq!(count_cpu_list("0-1,4"), Some(3));
        assert_eq!(count_cpu_list("x"), None);
    }
}
