use super::*;

/// The first 32 bytes of a glibc's hot functions, copied from its libc.so.6.
struct Glibc {
    version: &'static str,
    malloc: [u8; 32],
    free: [u8; 32],
    calloc: [u8; 32],
    realloc: [u8; 32],
    /// Probed as a marker (`choose_marker`).
    exit: [u8; 32],
}

/// Debian 12 (bookworm), this machine's /lib/x86_64-linux-gnu/libc.so.6.
const GLIBC_2_36: Glibc = Glibc {
    version: "2.36",
    malloc: [
        0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfb, 0x48, 0x83, 0xec, 0x10, 0x80, 0x3d, 0x46, 0x1b,
        0x14, 0x00, 0x00, 0x0f, 0x84, 0xf8, 0x01, 0x00, 0x00, 0x48, 0x85, 0xdb, 0x0f, 0x88, 0xfd,
        0x01, 0x00,
    ],
    free: [
        0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55, 0x48, 0x8d, 0x77, 0xf0, 0x53,
        0x48, 0x83, 0xec, 0x18, 0x48, 0x8b, 0x1d, 0xd6, 0x9e, 0x13, 0x00, 0x48, 0x8b, 0x47, 0xf8,
        0x64, 0x8b,
    ],
    calloc: [
        0x41, 0x55, 0x48, 0x89, 0xf8, 0x41, 0x54, 0x55, 0x53, 0x48, 0x83, 0xec, 0x18, 0x48, 0xf7,
        0xe6, 0x48, 0x89, 0xc3, 0x0f, 0x90, 0xc0, 0x48, 0x85, 0xdb, 0x0f, 0x88, 0xd9, 0x02, 0x00,
        0x00, 0x0f,
    ],
    realloc: [
        0x41, 0x57, 0x41, 0x56, 0x41, 0x55, 0x41, 0x54, 0x55, 0x48, 0x89, 0xf5, 0x53, 0x48, 0x89,
        0xfb, 0x48, 0x83, 0xec, 0x28, 0x80, 0x3d, 0x3d, 0x13, 0x14, 0x00, 0x00, 0x0f, 0x84, 0x57,
        0x01, 0x00,
    ],
    exit: [
        0x48, 0x83, 0xec, 0x08, 0xb9, 0x01, 0x00, 0x00, 0x00, 0xba, 0x01, 0x00, 0x00, 0x00, 0x48,
        0x8d, 0x35, 0x8b, 0x51, 0x19, 0x00, 0xe8, 0x56, 0xfd, 0xff, 0xff, 0x66, 0x0f, 0x1f, 0x44,
        0x00, 0x00,
    ],
};

/// Debian 13 (trixie).
const GLIBC_2_41: Glibc = Glibc {
    version: "2.41",
    malloc: [
        0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfb, 0x48, 0x83, 0xec, 0x10, 0x80, 0x3d, 0x46, 0x99,
        0x14, 0x00, 0x00, 0x0f, 0x84, 0x68, 0x01, 0x00, 0x00, 0x48, 0x85, 0xdb, 0x0f, 0x88, 0x6d,
        0x01, 0x00,
    ],
    free: [
        0x48, 0x85, 0xff, 0x0f, 0x84, 0x7f, 0x01, 0x00, 0x00, 0x41, 0x57, 0x41, 0x56, 0x41, 0x55,
        0x41, 0x54, 0x55, 0x48, 0x8d, 0x6f, 0xf0, 0x53, 0x48, 0x83, 0xec, 0x28, 0x4c, 0x8b, 0x25,
        0x0e, 0x1e,
    ],
    calloc: [
        0x41, 0x56, 0x48, 0x89, 0xf8, 0x41, 0x55, 0x41, 0x54, 0x55, 0x53, 0x48, 0x83, 0xec, 0x10,
        0x48, 0xf7, 0xe6, 0x48, 0x89, 0xc3, 0x0f, 0x90, 0xc0, 0x48, 0x85, 0xdb, 0x0f, 0x88, 0x2f,
        0x02, 0x00,
    ],
    realloc: [
        0x41, 0x57, 0x41, 0x56, 0x41, 0x55, 0x41, 0x54, 0x55, 0x48, 0x89, 0xf5, 0x53, 0x48, 0x89,
        0xfb, 0x48, 0x83, 0xec, 0x38, 0x80, 0x3d, 0xfd, 0x8e, 0x14, 0x00, 0x00, 0x0f, 0x84, 0xaf,
        0x01, 0x00,
    ],
    exit: [
        0x48, 0x83, 0xec, 0x08, 0xb9, 0x01, 0x00, 0x00, 0x00, 0xba, 0x01, 0x00, 0x00, 0x00, 0x48,
        0x8d, 0x35, 0x8b, 0x33, 0x1a, 0x00, 0xe8, 0x56, 0xfd, 0xff, 0xff, 0x66, 0x0f, 0x1f, 0x44,
        0x00, 0x00,
    ],
};

/// Debian sid: no push before the first branch of any of the four.
const GLIBC_2_43: Glibc = Glibc {
    version: "2.43",
    malloc: [
        0x48, 0x85, 0xff, 0x78, 0x71, 0x48, 0x8d, 0x47, 0x17, 0x48, 0x8b, 0x15, 0x38, 0x25, 0x14,
        0x00, 0x48, 0x83, 0xf8, 0x1f, 0x76, 0x5a, 0x48, 0x83, 0xe0, 0xf0, 0x48, 0x39, 0xd0, 0x73,
        0x57, 0x48,
    ],
    free: [
        0x48, 0x85, 0xff, 0x0f, 0x84, 0xe7, 0x00, 0x00, 0x00, 0x40, 0xf6, 0xc7, 0x0f, 0x0f, 0x85,
        0xcd, 0x00, 0x00, 0x00, 0x4c, 0x8b, 0x47, 0xf8, 0x4d, 0x89, 0xc2, 0x49, 0x83, 0xe2, 0xf8,
        0x4c, 0x3b,
    ],
    calloc: [
        0x48, 0x89, 0xf8, 0x48, 0xf7, 0xe6, 0x0f, 0x80, 0x9c, 0x01, 0x00, 0x00, 0x0f, 0x90, 0xc1,
        0x48, 0x85, 0xc0, 0x0f, 0x88, 0xd6, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x50, 0x17, 0x48, 0x8b,
        0x35, 0x95,
    ],
    realloc: [
        0x49, 0x89, 0xf1, 0x48, 0x85, 0xff, 0x0f, 0x84, 0x44, 0x03, 0x00, 0x00, 0x41, 0x57, 0x49,
        0x89, 0xf8, 0x41, 0x56, 0x41, 0x55, 0x41, 0x54, 0x55, 0x53, 0x48, 0x83, 0xec, 0x38, 0x48,
        0x85, 0xf6,
    ],
    exit: [
        0x50, 0x58, 0xb9, 0x01, 0x00, 0x00, 0x00, 0xba, 0x01, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x35,
        0x5d, 0x4a, 0x1a, 0x00, 0x48, 0x83, 0xec, 0x08, 0xe8, 0x44, 0xfd, 0xff, 0xff, 0x66, 0x2e,
        0x0f, 0x1f,
    ],
};

/// (offset, instruction) chosen for malloc, free, calloc, realloc.
fn hot(glibc: &Glibc) -> [(u64, String, How); 4] {
    let one = Arguments::first(1);
    let two = Arguments::first(2);
    [
        (&glibc.malloc, one),
        (&glibc.free, one),
        (&glibc.calloc, two),
        (&glibc.realloc, two),
    ]
    .map(|(code, args)| {
        let p = choose(code, args);
        (p.offset, p.instruction, p.how)
    })
}

#[test]
fn glibc_2_36_and_2_41_start_with_a_push_and_free_with_its_null_check() {
    for glibc in [&GLIBC_2_36, &GLIBC_2_41] {
        let [malloc, free, calloc, realloc] = hot(glibc);
        let v = glibc.version;
        assert_eq!(malloc.0, 0, "{v} malloc: {malloc:?}");
        assert!(malloc.1.starts_with("push r12"), "{v}");
        assert_eq!(calloc.0, 0, "{v} calloc: {calloc:?}");
        assert_eq!(realloc.0, 0, "{v} realloc: {realloc:?}");
        assert_eq!(realloc.1, "push r15", "{v}");
        // test rdi,rdi; je: on the je, which every call reaches.
        assert_eq!(
            (free.0, free.2),
            (3, How::Emulated { past: 1 }),
            "{v} free: {free:?}"
        );
        assert!(free.1.starts_with("je "), "{v}: {}", free.1);
    }
}

#[test]
fn glibc_2_43_probes_sit_on_the_first_branch() {
    let [malloc, free, calloc, realloc] = hot(&GLIBC_2_43);
    // test rdi,rdi; js
    assert_eq!((malloc.0, malloc.2), (3, How::Emulated { past: 1 }));
    assert!(malloc.1.starts_with("js "), "{}", malloc.1);
    // test rdi,rdi; je
    assert_eq!((free.0, free.2), (3, How::Emulated { past: 1 }));
    assert!(free.1.starts_with("je "), "{}", free.1);
    // mov rax,rdi; mul rsi; jo: rax and rdx are not calloc's arguments.
    assert_eq!((calloc.0, calloc.2), (6, How::Emulated { past: 2 }));
    assert!(calloc.1.starts_with("jo "), "{}", calloc.1);
    // mov r9,rsi; test rdi,rdi; je
    assert_eq!((realloc.0, realloc.2), (6, How::Emulated { past: 2 }));
    assert!(realloc.1.starts_with("je "), "{}", realloc.1);
}

#[test]
fn no_hot_function_of_any_glibc_is_single_stepped() {
    for glibc in [&GLIBC_2_36, &GLIBC_2_41, &GLIBC_2_43] {
        for (offset, instruction, how) in hot(glibc) {
            assert_ne!(
                how,
                How::SingleStepped,
                "glibc {}: +{offset} {instruction}",
                glibc.version
            );
        }
    }
}

#[test]
fn an_argument_written_before_any_emulated_instruction_keeps_the_entry() {
    // glibc 2.43 reallocarray(ptr, nmemb, size): mov rax,rsi; mul rdx; ...
    // mul writes rdx, its third argument.
    let code = [
        0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x48, 0x89, 0xc6, 0x70, 0x05,
    ];
    let p = choose(&code, Arguments::first(3));
    assert_eq!((p.offset, p.how), (0, How::SingleStepped));
    assert_eq!(p.instruction, "mov rax,rsi");
    // A two-argument function may lose rdx: on the jo.
    let p = choose(&code, Arguments::first(2));
    assert_eq!(p.how, How::SingleStepped, "mov rsi,rax writes rsi");
    let p = choose(&code, Arguments::first(1));
    assert_eq!((p.offset, p.how), (9, How::Emulated { past: 3 }));
}

#[test]
fn a_context_pointer_first_shifts_the_arguments() {
    // mov rdi,[rdi+8]; push rbx: rdi is the context, size is in rsi.
    let code = [0x48, 0x8b, 0x7f, 0x08, 0x53];
    let p = choose(&code, Arguments::first(1).after_context());
    assert_eq!((p.offset, p.how), (4, How::Emulated { past: 1 }));
    assert_eq!(choose(&code, Arguments::first(1)).how, How::SingleStepped);
    // mov esi,1 writes rsi (a write to part of a register is a write to it).
    let code = [0xbe, 0x01, 0x00, 0x00, 0x00, 0x53];
    assert_eq!(
        choose(&code, Arguments::first(1).after_context()).how,
        How::SingleStepped
    );
}

#[test]
fn the_stack_frame_pointer_and_memory_are_left_alone() {
    // sub rsp,8; push rbx
    let p = choose(&[0x48, 0x83, 0xec, 0x08, 0x53], Arguments::first(1));
    assert_eq!(p.how, How::SingleStepped);
    // mov rbp,rsp; push rbx
    let p = choose(&[0x48, 0x89, 0xe5, 0x53], Arguments::first(1));
    assert_eq!(p.how, How::SingleStepped);
    // mov [rip+0x10],rax; push rbx
    let code = [0x48, 0x89, 0x05, 0x10, 0x00, 0x00, 0x00, 0x53];
    assert_eq!(choose(&code, Arguments::first(1)).how, How::SingleStepped);
    // cmp byte ptr [rip+0x140208],0; push r12 (glibc 2.36 posix_memalign):
    // reading memory is fine.
    let code = [
        0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54, 0x49, 0x89, 0xd4,
    ];
    let p = choose(&code, Arguments::first(3));
    assert_eq!((p.offset, p.how), (7, How::Emulated { past: 1 }));
}

#[test]
fn a_branch_the_kernel_single_steps_ends_the_search() {
    // jmp qword ptr [rip+0x10] (indirect); push rbx
    let code = [0xff, 0x25, 0x10, 0x00, 0x00, 0x00, 0x53];
    assert_eq!(choose(&code, Arguments::first(1)).how, How::SingleStepped);
    // ret; push rbx
    assert_eq!(
        choose(&[0xc3, 0x53], Arguments::first(1)).how,
        How::SingleStepped
    );
    // syscall; push rbx: the kernel runs in between.
    assert_eq!(
        choose(&[0x0f, 0x05, 0x53], Arguments::first(1)).how,
        How::SingleStepped
    );
}

#[test]
fn endbr64_is_passed() {
    // endbr64; push rbp
    let p = choose(
        &[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5],
        Arguments::first(1),
    );
    assert_eq!((p.offset, p.how), (4, How::Emulated { past: 1 }));
}

#[test]
fn nops_and_branches_are_emulated() {
    let one = Arguments::first(1);
    assert_eq!(
        choose(&[0x0f, 0x1f, 0x44, 0x00, 0x00], one).how,
        How::Emulated { past: 0 }
    );
    assert_eq!(
        choose(&[0xe9, 0x00, 0x01, 0x00, 0x00], one).how,
        How::Emulated { past: 0 }
    );
    assert_eq!(choose(&[0x74, 0x07], one).how, How::Emulated { past: 0 });
    // A non-kernel nop encoding (nop word ptr cs:[rax+rax]) is not, but
    // leaves everything as it was.
    let code = [0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0, 0x53];
    assert_eq!(
        choose(&code, one).how,
        How::Emulated { past: 1 },
        "on the push"
    );
}

#[test]
fn garbage_and_cut_instructions_are_handled() {
    let one = Arguments::first(1);
    assert_eq!(choose(&[], one).how, How::SingleStepped);
    assert_eq!(choose(&[0x0f], one).how, How::SingleStepped);
    // test rdi,rdi; then je cut off by the end of the bytes read.
    let p = choose(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0xe7], one);
    assert_eq!((p.offset, p.how), (0, How::SingleStepped));
}

#[test]
fn the_log_says_how() {
    let p = choose(&GLIBC_2_43.calloc, Arguments::first(2));
    assert_eq!(
        p.to_string(),
        format!("+6 ({}; emulated, past 2 instructions)", p.instruction)
    );
}

#[test]
fn exit_is_probed_on_its_first_emulated_instruction() {
    // sub rsp,8; mov ecx,1; mov edx,1; lea rsi,[rip+..]; call: on the call.
    for glibc in [&GLIBC_2_36, &GLIBC_2_41] {
        let v = glibc.version;
        let p = choose_marker(&glibc.exit);
        assert_eq!(
            (p.offset, p.how),
            (21, How::Emulated { past: 4 }),
            "{v}: {p:?}"
        );
        assert!(p.instruction.starts_with("call "), "{v}: {p:?}");
        // A program that read the stack could not pass the sub rsp.
        assert_eq!(
            choose(&glibc.exit, Arguments::first(0)).how,
            How::SingleStepped
        );
    }
    // push rax
    let p = choose_marker(&GLIBC_2_43.exit);
    assert_eq!((p.offset, p.how), (0, How::Emulated { past: 0 }), "{p:?}");
}

#[test]
fn a_marker_passes_stack_stores_but_not_other_stores_or_branches() {
    // mov [rsp-8],rdi; push rbx
    let p = choose_marker(&[0x48, 0x89, 0x7c, 0x24, 0xf8, 0x53]);
    assert_eq!((p.offset, p.how), (5, How::Emulated { past: 1 }));
    // mov dword [rip+16],1; push rbx: the store is seen by the program's
    // reader (a walk of a process held at Py_FinalizeEx).
    let p = choose_marker(&[
        0xc7, 0x05, 0x10, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x53,
    ]);
    assert_eq!((p.offset, p.how), (0, How::SingleStepped));
    // ret; push rbx: not every call reaches the push.
    let p = choose_marker(&[0xc3, 0x53]);
    assert_eq!((p.offset, p.how), (0, How::SingleStepped));
}
