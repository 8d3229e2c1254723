//! Xen ELF notes and the entry stub. Xen reads the notes to load us (64-bit PV, virtual base 0),
//! writes its hypercall page at `hypercall_page`, and enters `_start` with %rsi = start_info.
use core::arch::global_asm;

/// Our own boot stack (Xen's is a single page).
pub const STACK_SIZE: usize = 512 * 1024;

#[repr(C, align(4096))]
pub struct Stack(pub [u8; STACK_SIZE]);

#[no_mangle]
pub static mut BOOT_STACK: Stack = Stack([0; STACK_SIZE]);

global_asm!(
    r#"
    .section .note.xen,"a",@note
    .macro xennote type, descbegin, descend
    .p2align 2
    .long 4
    .long \descend - \descbegin
    .long \type
    .asciz "Xen"
    .endm

    xennote 6, 60f, 61f
60: .asciz "inflate-loader"
61: .p2align 2
    xennote 7, 62f, 63f
62: .asciz "0.1"
63: .p2align 2
    xennote 5, 64f, 65f
64: .asciz "xen-3.0"
65: .p2align 2
    xennote 8, 66f, 67f
66: .asciz "generic"
67: .p2align 2
    xennote 3, 68f, 69f
68: .quad 0
69: .p2align 2
    xennote 4, 70f, 71f
70: .quad 0
71: .p2align 2
    xennote 1, 72f, 73f
72: .quad _start
73: .p2align 2
    xennote 2, 74f, 75f
74: .quad hypercall_page
75: .p2align 2
    xennote 10, 76f, 77f
76: .asciz "!writable_page_tables"
77: .p2align 2

    .section .text.entry,"ax",@progbits
    .globl _start
_start:
    cld
    lea BOOT_STACK+{stack}(%rip), %rsp
    mov %rsi, %rdi
    call kmain
1:  hlt
    jmp 1b
"#,
    stack = const STACK_SIZE,
    options(att_syntax)
);
