//! Reading another process's memory (`process_vm_readv`).

use std::io::IoSliceMut;

use nix::{
    sys::uio::{RemoteIoVec, process_vm_readv},
    unistd::Pid,
};

/// The memory of one process.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pid: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {len} bytes at {addr:#x} of pid {pid}: {source}")]
pub struct ReadError {
    pid: u32,
    addr: u64,
    len: usize,
    source: nix::Error,
}

impl Memory {
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }

    pub fn read_into(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let len = buf.len();
        let err = |source| ReadError {
            pid: self.pid,
            addr,
            len,
            source,
        };
        let remote = [RemoteIoVec {
            base: addr as usize,
            len,
        }];
        let got = process_vm_readv(
            Pid::from_raw(self.pid as i32),
            &mut [IoSliceMut::new(buf)],
            &remote,
        )
        .map_err(err)?;
        if got != len {
            return Err(err(nix::Error::EFAULT));
        }
        Ok(())
    }

    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let mut buf = vec![0; len];
        self.read_into(addr, &mut buf)?;
        Ok(buf)
    }

    pub fn u64(&self, addr: u64) -> Result<u64, ReadError> {
        let mut b = [0; 8];
        self.read_into(addr, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    pub fn i64(&self, addr: u64) -> Result<i64, ReadError> {
        Ok(self.u64(addr)? as i64)
    }

    pub fn u32(&self, addr: u64) -> Result<u32, ReadError> {
        let mut b = [0; 4];
        self.read_into(addr, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }

    /// `len` bytes at each of `addrs`, into `out` (`len` bytes per address,
    /// in order), in as few system calls as the kernel allows (`IOV_MAX`
    /// ranges per call). Returns which were read; an unreadable range
    /// leaves zeros. Also returns the number of calls made.
    pub fn read_many(&self, addrs: &[u64], len: usize, out: &mut Vec<u8>) -> (Vec<bool>, u64) {
        out.clear();
        out.resize(addrs.len() * len, 0);
        let mut ok = vec![false; addrs.len()];
        let mut calls = 0;
        let mut next = 0;
        while next < addrs.len() {
            let end = (next + IOV_MAX).min(addrs.len());
            let remote: Vec<RemoteIoVec> = addrs[next..end]
                .iter()
                .map(|&a| RemoteIoVec {
                    base: a as usize,
                    len,
                })
                .collect();
            let local = &mut out[next * len..end * len];
            calls += 1;
            let got = process_vm_readv(
                Pid::from_raw(self.pid as i32),
                &mut [IoSliceMut::new(local)],
                &remote,
            )
            .unwrap_or(0);
            // The kernel stops at the first range it cannot read.
            let whole = got / len.max(1);
            for flag in &mut ok[next..next + whole] {
                *flag = true;
            }
            next += whole;
            // Skip the one that failed.
            if next < end {
                next += 1;
            }
        }
        (ok, calls)
    }
}

/// Ranges one `process_vm_readv` takes (the kernel's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mem = Memory::new(std::process::id());
        let addr = &value as *const u64 as u64;
        assert_eq!(mem.u64(addr).expect("read"), value);
        assert_eq!(mem.u32(addr).expect("read"), 0x5566_7788);
        assert!(mem.u64(8).is_err(), "page zero is unmapped");
    }

    #[test]
    fn reads_many_ranges_and_skips_bad_ones() {
        let values: Vec<u64> = (0..3000).map(|i| i * 7).collect();
        let mem = Memory::new(std::process::id());
        let mut addrs: Vec<u64> = values.iter().map(|v| v as *const u64 as u64).collect();
        addrs[5] = 8;
        let mut out = Vec::new();
        let (ok, calls) = mem.read_many(&addrs, 8, &mut out);
        assert_eq!(calls, 4, "1024 ranges per call, a failed one restarts");
        assert!(!ok[5]);
        assert_eq!(ok.iter().filter(|&&o| o).count(), 2999);
        let at = |i: usize| u64::from_ne_bytes(out[i * 8..i * 8 + 8].try_into().expect("8"));
        assert_eq!(at(2999), 2999 * 7);
        assert_eq!(at(6), 42);
    }
}
