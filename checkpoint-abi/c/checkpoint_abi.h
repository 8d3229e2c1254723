/* SPDX-License-Identifier: GPL-2.0 */
/* GENERATED from checkpoint-abi/src/abi.rs by checkpoint-abi/tests/c_header.rs: do not
 * edit. Regenerate: CHECKPOINT_ABI_WRITE_HEADER=1 cargo test -p checkpoint-abi
 * The /dev/checkpoint ABI (docs/checkpoint-abi.md) for C programs. */
#ifndef CHECKPOINT_ABI_H
#define CHECKPOINT_ABI_H

#include <stddef.h>
#include <stdint.h>

#define CKPT_ABI_VERSION 2
#define CKPT_PAGE_SIZE 4096
#define CKPT_MAX_READ_PAGES 256
/* Linux's _IOC(dir, 'C', nr, size) on x86_64: dir 1 write, 2 read, 3 both. */
#define CKPT_IOC(dir, nr, size) (((unsigned long)(dir) << 30) | \
	((unsigned long)(size) << 16) | (0x43UL << 8) | (nr))
#define CKPT_IOC_GET_FACTS 0x80804301U
#define CKPT_IOC_TRACK_START 0x40104302U
#define CKPT_IOC_TRACK_STOP 0x00004303U
#define CKPT_IOC_NEXT_ROUND 0xC0704304U
#define CKPT_IOC_CAPTURE 0xC0804305U
#define CKPT_IOC_READ_TABLE 0xC0304306U
#define CKPT_IOC_OUTPUT_HOLD 0xC0204307U
#define CKPT_IOC_THROTTLE 0xC0204308U

#define CKPT_TABLE_P2M 1
#define CKPT_TABLE_P2M_CAPTURED 2
#define CKPT_TABLE_PAGE_TYPES 3
#define CKPT_TABLE_P2M_FRAMES 4
#define CKPT_STATE_SESSION 1
#define CKPT_STATE_CAPTURE_HELD 2
#define CKPT_THROTTLE_SET 1
#define CKPT_THROTTLE_MAX 8
#define CKPT_TRACK_ELIDE_FREE 1ULL
#define CKPT_TRACK_FAULT 2ULL
#define CKPT_TRACK_ORACLE 4ULL
#define CKPT_CAPTURE_ORACLE 1ULL
#define CKPT_P2M_INVALID 0xFFFFFFFFFFFFFFFFULL
#define CKPT_P2M_IDENTITY 0x4000000000000000ULL
#define CKPT_P2M_FOREIGN 0x8000000000000000ULL

#define CKPT_PT_NORMAL 0x00
#define CKPT_PT_L1 0x01
#define CKPT_PT_L2 0x02
#define CKPT_PT_L3 0x03
#define CKPT_PT_L4 0x04
#define CKPT_PT_NOT_RAM 0x0F
#define CKPT_PT_PINNED 0x80
#define CKPT_PT_LEVEL_MASK 0x0F
#define CKPT_XEN_L4_FIRST 256
#define CKPT_XEN_L4_LAST 271

/* Xen's x86_64 struct vcpu_guest_context: size and byte offsets. */
#define CKPT_VCPU_CTX_BYTES 5168
#define CKPT_VCPU_FPU_CTXT 0
#define CKPT_VCPU_FLAGS 512
#define CKPT_VCPU_USER_REGS 520
#define CKPT_VCPU_R15 520
#define CKPT_VCPU_R14 528
#define CKPT_VCPU_R13 536
#define CKPT_VCPU_R12 544
#define CKPT_VCPU_RBP 552
#define CKPT_VCPU_RBX 560
#define CKPT_VCPU_RAX 600
#define CKPT_VCPU_RCX 608
#define CKPT_VCPU_RDX 616
#define CKPT_VCPU_RSI 624
#define CKPT_VCPU_RDI 632
#define CKPT_VCPU_RIP 648
#define CKPT_VCPU_CS 656
#define CKPT_VCPU_RFLAGS 664
#define CKPT_VCPU_RSP 672
#define CKPT_VCPU_SS 680
#define CKPT_VCPU_ES 688
#define CKPT_VCPU_DS 696
#define CKPT_VCPU_FS 704
#define CKPT_VCPU_GS 712
#define CKPT_VCPU_TRAP_CTXT 720
#define CKPT_VCPU_LDT_BASE 4816
#define CKPT_VCPU_LDT_ENTS 4824
#define CKPT_VCPU_GDT_FRAMES 4832
#define CKPT_VCPU_GDT_ENTS 4960
#define CKPT_VCPU_KERNEL_SS 4968
#define CKPT_VCPU_KERNEL_SP 4976
#define CKPT_VCPU_CTRLREG 4984
#define CKPT_VCPU_CR0 4984
#define CKPT_VCPU_CR1 4992
#define CKPT_VCPU_CR3 5008
#define CKPT_VCPU_CR4 5016
#define CKPT_VCPU_DEBUGREG 5048
#define CKPT_VCPU_EVENT_CALLBACK_EIP 5112
#define CKPT_VCPU_FAILSAFE_CALLBACK_EIP 5120
#define CKPT_VCPU_SYSCALL_CALLBACK_EIP 5128
#define CKPT_VCPU_VM_ASSIST 5136
#define CKPT_VCPU_FS_BASE 5144
#define CKPT_VCPU_GS_BASE_KERNEL 5152
#define CKPT_VCPU_GS_BASE_USER 5160

struct ckpt_facts { /* 128 bytes */
	uint32_t abi_version; /* 0 */
	uint32_t page_size; /* 4 */
	uint64_t max_pfn; /* 8 */
	uint64_t nr_pages; /* 16 */
	uint64_t start_info_pfn; /* 24 */
	uint64_t start_info_mfn; /* 32 */
	uint64_t shared_info_maddr; /* 40 */
	uint64_t store_mfn; /* 48 */
	uint64_t console_mfn; /* 56 */
	uint32_t store_evtchn; /* 64 */
	uint32_t console_evtchn; /* 68 */
	uint32_t online_cpus; /* 72 */
	uint32_t guest_width; /* 76 */
	uint32_t pt_levels; /* 80 */
	uint32_t state; /* 84 */
	uint64_t p2m_frames; /* 88 */
	uint64_t reserved[4]; /* 96 */
};
_Static_assert(sizeof(struct ckpt_facts) == 128, "ckpt_facts size");
_Static_assert(offsetof(struct ckpt_facts, abi_version) == 0, "ckpt_facts.abi_version");
_Static_assert(offsetof(struct ckpt_facts, page_size) == 4, "ckpt_facts.page_size");
_Static_assert(offsetof(struct ckpt_facts, max_pfn) == 8, "ckpt_facts.max_pfn");
_Static_assert(offsetof(struct ckpt_facts, nr_pages) == 16, "ckpt_facts.nr_pages");
_Static_assert(offsetof(struct ckpt_facts, start_info_pfn) == 24, "ckpt_facts.start_info_pfn");
_Static_assert(offsetof(struct ckpt_facts, start_info_mfn) == 32, "ckpt_facts.start_info_mfn");
_Static_assert(offsetof(struct ckpt_facts, shared_info_maddr) == 40, "ckpt_facts.shared_info_maddr");
_Static_assert(offsetof(struct ckpt_facts, store_mfn) == 48, "ckpt_facts.store_mfn");
_Static_assert(offsetof(struct ckpt_facts, console_mfn) == 56, "ckpt_facts.console_mfn");
_Static_assert(offsetof(struct ckpt_facts, store_evtchn) == 64, "ckpt_facts.store_evtchn");
_Static_assert(offsetof(struct ckpt_facts, console_evtchn) == 68, "ckpt_facts.console_evtchn");
_Static_assert(offsetof(struct ckpt_facts, online_cpus) == 72, "ckpt_facts.online_cpus");
_Static_assert(offsetof(struct ckpt_facts, guest_width) == 76, "ckpt_facts.guest_width");
_Static_assert(offsetof(struct ckpt_facts, pt_levels) == 80, "ckpt_facts.pt_levels");
_Static_assert(offsetof(struct ckpt_facts, state) == 84, "ckpt_facts.state");
_Static_assert(offsetof(struct ckpt_facts, p2m_frames) == 88, "ckpt_facts.p2m_frames");
_Static_assert(offsetof(struct ckpt_facts, reserved) == 96, "ckpt_facts.reserved");

struct ckpt_track { /* 16 bytes */
	uint64_t flags; /* 0 */
	uint64_t reserved; /* 8 */
};
_Static_assert(sizeof(struct ckpt_track) == 16, "ckpt_track size");
_Static_assert(offsetof(struct ckpt_track, flags) == 0, "ckpt_track.flags");
_Static_assert(offsetof(struct ckpt_track, reserved) == 8, "ckpt_track.reserved");

struct ckpt_round { /* 112 bytes */
	uint64_t bitmap; /* 0 */
	uint64_t bitmap_bytes; /* 8 */
	uint64_t flags; /* 16 */
	uint64_t round; /* 24 */
	uint64_t dirty; /* 32 */
	uint64_t scanned; /* 40 */
	uint64_t scan_ns; /* 48 */
	uint64_t unreadable; /* 56 */
	uint64_t free; /* 64 */
	uint64_t oracle_bitmap; /* 72 */
	uint64_t oracle_dirty; /* 80 */
	uint64_t deferred; /* 88 */
	uint64_t reserved[2]; /* 96 */
};
_Static_assert(sizeof(struct ckpt_round) == 112, "ckpt_round size");
_Static_assert(offsetof(struct ckpt_round, bitmap) == 0, "ckpt_round.bitmap");
_Static_assert(offsetof(struct ckpt_round, bitmap_bytes) == 8, "ckpt_round.bitmap_bytes");
_Static_assert(offsetof(struct ckpt_round, flags) == 16, "ckpt_round.flags");
_Static_assert(offsetof(struct ckpt_round, round) == 24, "ckpt_round.round");
_Static_assert(offsetof(struct ckpt_round, dirty) == 32, "ckpt_round.dirty");
_Static_assert(offsetof(struct ckpt_round, scanned) == 40, "ckpt_round.scanned");
_Static_assert(offsetof(struct ckpt_round, scan_ns) == 48, "ckpt_round.scan_ns");
_Static_assert(offsetof(struct ckpt_round, unreadable) == 56, "ckpt_round.unreadable");
_Static_assert(offsetof(struct ckpt_round, free) == 64, "ckpt_round.free");
_Static_assert(offsetof(struct ckpt_round, oracle_bitmap) == 72, "ckpt_round.oracle_bitmap");
_Static_assert(offsetof(struct ckpt_round, oracle_dirty) == 80, "ckpt_round.oracle_dirty");
_Static_assert(offsetof(struct ckpt_round, deferred) == 88, "ckpt_round.deferred");
_Static_assert(offsetof(struct ckpt_round, reserved) == 96, "ckpt_round.reserved");

struct ckpt_capture { /* 128 bytes */
	uint64_t flags; /* 0 */
	uint64_t max_snapshot_pages; /* 8 */
	uint64_t bitmap; /* 16 */
	uint64_t bitmap_bytes; /* 24 */
	uint64_t vcpu; /* 32 */
	uint64_t vcpu_bytes; /* 40 */
	uint64_t result; /* 48 */
	uint64_t snapshot_pages; /* 56 */
	uint64_t pause_ns; /* 64 */
	uint64_t suspend_ns; /* 72 */
	uint64_t pt_pages; /* 80 */
	uint64_t scanned; /* 88 */
	uint64_t unreadable; /* 96 */
	uint64_t free; /* 104 */
	uint64_t snapshot_hwm; /* 112 */
	uint64_t oracle_digest; /* 120 */
};
_Static_assert(sizeof(struct ckpt_capture) == 128, "ckpt_capture size");
_Static_assert(offsetof(struct ckpt_capture, flags) == 0, "ckpt_capture.flags");
_Static_assert(offsetof(struct ckpt_capture, max_snapshot_pages) == 8, "ckpt_capture.max_snapshot_pages");
_Static_assert(offsetof(struct ckpt_capture, bitmap) == 16, "ckpt_capture.bitmap");
_Static_assert(offsetof(struct ckpt_capture, bitmap_bytes) == 24, "ckpt_capture.bitmap_bytes");
_Static_assert(offsetof(struct ckpt_capture, vcpu) == 32, "ckpt_capture.vcpu");
_Static_assert(offsetof(struct ckpt_capture, vcpu_bytes) == 40, "ckpt_capture.vcpu_bytes");
_Static_assert(offsetof(struct ckpt_capture, result) == 48, "ckpt_capture.result");
_Static_assert(offsetof(struct ckpt_capture, snapshot_pages) == 56, "ckpt_capture.snapshot_pages");
_Static_assert(offsetof(struct ckpt_capture, pause_ns) == 64, "ckpt_capture.pause_ns");
_Static_assert(offsetof(struct ckpt_capture, suspend_ns) == 72, "ckpt_capture.suspend_ns");
_Static_assert(offsetof(struct ckpt_capture, pt_pages) == 80, "ckpt_capture.pt_pages");
_Static_assert(offsetof(struct ckpt_capture, scanned) == 88, "ckpt_capture.scanned");
_Static_assert(offsetof(struct ckpt_capture, unreadable) == 96, "ckpt_capture.unreadable");
_Static_assert(offsetof(struct ckpt_capture, free) == 104, "ckpt_capture.free");
_Static_assert(offsetof(struct ckpt_capture, snapshot_hwm) == 112, "ckpt_capture.snapshot_hwm");
_Static_assert(offsetof(struct ckpt_capture, oracle_digest) == 120, "ckpt_capture.oracle_digest");

struct ckpt_throttle { /* 32 bytes */
	uint32_t pid; /* 0 */
	uint32_t flags; /* 4 */
	uint32_t stop_ms; /* 8 */
	uint32_t period_ms; /* 12 */
	uint64_t stopped_ns; /* 16 */
	uint64_t reserved; /* 24 */
};
_Static_assert(sizeof(struct ckpt_throttle) == 32, "ckpt_throttle size");
_Static_assert(offsetof(struct ckpt_throttle, pid) == 0, "ckpt_throttle.pid");
_Static_assert(offsetof(struct ckpt_throttle, flags) == 4, "ckpt_throttle.flags");
_Static_assert(offsetof(struct ckpt_throttle, stop_ms) == 8, "ckpt_throttle.stop_ms");
_Static_assert(offsetof(struct ckpt_throttle, period_ms) == 12, "ckpt_throttle.period_ms");
_Static_assert(offsetof(struct ckpt_throttle, stopped_ns) == 16, "ckpt_throttle.stopped_ns");
_Static_assert(offsetof(struct ckpt_throttle, reserved) == 24, "ckpt_throttle.reserved");

struct ckpt_hold { /* 32 bytes */
	uint32_t flags; /* 0 */
	uint32_t reserved; /* 4 */
	uint8_t saddr[4]; /* 8 */
	uint8_t daddr[4]; /* 12 */
	uint8_t sport[2]; /* 16 */
	uint8_t dport[2]; /* 18 */
	uint32_t reserved2; /* 20 */
	uint64_t dropped; /* 24 */
};
_Static_assert(sizeof(struct ckpt_hold) == 32, "ckpt_hold size");
_Static_assert(offsetof(struct ckpt_hold, flags) == 0, "ckpt_hold.flags");
_Static_assert(offsetof(struct ckpt_hold, reserved) == 4, "ckpt_hold.reserved");
_Static_assert(offsetof(struct ckpt_hold, saddr) == 8, "ckpt_hold.saddr");
_Static_assert(offsetof(struct ckpt_hold, daddr) == 12, "ckpt_hold.daddr");
_Static_assert(offsetof(struct ckpt_hold, sport) == 16, "ckpt_hold.sport");
_Static_assert(offsetof(struct ckpt_hold, dport) == 18, "ckpt_hold.dport");
_Static_assert(offsetof(struct ckpt_hold, reserved2) == 20, "ckpt_hold.reserved2");
_Static_assert(offsetof(struct ckpt_hold, dropped) == 24, "ckpt_hold.dropped");

struct ckpt_table { /* 48 bytes */
	uint32_t table; /* 0 */
	uint32_t reserved; /* 4 */
	uint64_t start; /* 8 */
	uint64_t count; /* 16 */
	uint64_t buf; /* 24 */
	uint64_t buf_bytes; /* 32 */
	uint64_t returned; /* 40 */
};
_Static_assert(sizeof(struct ckpt_table) == 48, "ckpt_table size");
_Static_assert(offsetof(struct ckpt_table, table) == 0, "ckpt_table.table");
_Static_assert(offsetof(struct ckpt_table, reserved) == 4, "ckpt_table.reserved");
_Static_assert(offsetof(struct ckpt_table, start) == 8, "ckpt_table.start");
_Static_assert(offsetof(struct ckpt_table, count) == 16, "ckpt_table.count");
_Static_assert(offsetof(struct ckpt_table, buf) == 24, "ckpt_table.buf");
_Static_assert(offsetof(struct ckpt_table, buf_bytes) == 32, "ckpt_table.buf_bytes");
_Static_assert(offsetof(struct ckpt_table, returned) == 40, "ckpt_table.returned");

#endif /* CHECKPOINT_ABI_H */
