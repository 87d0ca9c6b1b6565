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
}

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
}
