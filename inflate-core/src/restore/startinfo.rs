//! The guest's start_info page. At the capture point Linux has replaced the xenstore and
//! console ring frames in it by their pfns (its pre-suspend step, as for a real save). The
//! restore points them at *this* domain's rings, which xenstored and xenconsoled already serve,
//! and gives the guest this domain's event channels and shared_info.
use super::xen::start_info as off;
use checkpoint_stream::PAGE_SIZE;

/// The values a guest resuming in this domain must adopt: the loader's own start_info fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnDomain {
    /// Machine address of this domain's shared_info page (start_info.shared_info).
    pub shared_info: u64,
    pub store_mfn: u64,
    pub store_evtchn: u32,
    pub console_mfn: u64,
    pub console_evtchn: u32,
}

fn rd64(p: &[u8; PAGE_SIZE], o: usize) -> u64 {
    u64::from_le_bytes(p[o..o + 8].try_into().unwrap())
}

/// The guest's xenstore and console ring pfns, if the page looks like a 64-bit PV start_info.
pub fn ring_pfns(page: &[u8; PAGE_SIZE]) -> Option<(u64, u64)> {
    page[off::MAGIC..off::MAGIC + off::MAGIC_LEN]
        .starts_with(off::MAGIC_PREFIX)
        .then(|| (rd64(page, off::STORE_MFN), rd64(page, off::CONSOLE_MFN)))
}

/// Rewrite the fields a restore owns, as Xen's own restore does: ring frames and event
/// channels, `nr_pages` = max_pfn + 1, `shared_info`, `flags` = 0. Everything else (page-table
/// base, p2m list address, command line) is the guest's and stays.
pub fn rewrite(page: &mut [u8; PAGE_SIZE], max_pfn: u64, own: &OwnDomain) {
    let mut put = |o: usize, v: &[u8]| page[o..o + v.len()].copy_from_slice(v);
    put(off::NR_PAGES, &(max_pfn + 1).to_le_bytes());
    put(off::SHARED_INFO, &own.shared_info.to_le_bytes());
    put(off::FLAGS, &0u32.to_le_bytes());
    put(off::STORE_MFN, &own.store_mfn.to_le_bytes());
    put(off::STORE_EVTCHN, &own.store_evtchn.to_le_bytes());
    put(off::CONSOLE_MFN, &own.console_mfn.to_le_bytes());
    put(off::CONSOLE_EVTCHN, &own.console_evtchn.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_sets_the_restore_fields_only() {
        let mut p = [0xa5u8; PAGE_SIZE];
        p[..32].fill(0);
        p[..14].copy_from_slice(b"xen-3.0-x86_64");
        p[56..64].copy_from_slice(&7u64.to_le_bytes());
        p[72..80].copy_from_slice(&9u64.to_le_bytes());
        assert_eq!(ring_pfns(&p), Some((7, 9)));
        let before = p;
        let own = OwnDomain {
            shared_info: 0x1234_5000,
            store_mfn: 0x777,
            store_evtchn: 1,
            console_mfn: 0x888,
            console_evtchn: 2,
        };
        rewrite(&mut p, 262143, &own);
        assert_eq!(rd64(&p, 32), 262144);
        assert_eq!(rd64(&p, 40), 0x1234_5000);
        assert_eq!(&p[48..52], &[0; 4]);
        assert_eq!(&p[52..56], &before[52..56], "padding after flags untouched");
        assert_eq!(rd64(&p, 56), 0x777);
        assert_eq!(&p[64..68], &1u32.to_le_bytes());
        assert_eq!(rd64(&p, 72), 0x888);
        assert_eq!(&p[80..84], &2u32.to_le_bytes());
        assert_eq!(
            &p[84..],
            &before[84..],
            "pt_base, mfn_list, cmd_line... stay"
        );
        assert_eq!(&p[..32], &before[..32]);
        p[0] = b'X';
        assert_eq!(ring_pfns(&p), None);
    }
}
