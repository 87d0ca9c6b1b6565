# A crafted "libc" for tests/tests/hostile_files.rs: its malloc, free and
# realloc symbols name addresses inside the immediates of real_code's
# instructions, which its own unwind table (the CFI below) says is one
# function. A probe there would put the kernel's int3 in the middle of an
# instruction of every process that maps this file.
        .text
        .globl  real_code
        .type   real_code, @function
real_code:
        .cfi_startproc
        movabs  $0x9090909090909090, %rax
        movabs  $0x9090909090909090, %rdx
        ret
        .cfi_endproc
        .size   real_code, .-real_code

        .globl  malloc
        .type   malloc, @function
        .set    malloc, real_code + 2
        .size   malloc, 8
        .globl  free
        .type   free, @function
        .set    free, real_code + 12
        .size   free, 8
        .globl  realloc
        .type   realloc, @function
        .set    realloc, real_code + 4
        .size   realloc, 6
        .section .note.GNU-stack,"",@progbits
