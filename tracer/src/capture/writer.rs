//! Writing a capture, to a file the caller opened (a new file under `-o`,
//! an unnamed temporary one otherwise).

use std::{
    fs::File,
    io::{self, BufWriter, Write},
};

use super::{MAGIC, Record, VERSION};

pub struct Writer {
    zstd: zstd::stream::write::Encoder<'static, BufWriter<File>>,
    buf: Vec<u8>,
}

impl Writer {
    /// Starts a capture in `file`, which must be empty.
    pub fn new(file: File) -> io::Result<Self> {
        let mut file = BufWriter::new(file);
        file.write_all(MAGIC)?;
        file.write_all(&VERSION.to_le_bytes())?;
        Ok(Self {
            zstd: zstd::stream::write::Encoder::new(file, 3)?,
            buf: Vec::with_capacity(256),
        })
    }

    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        self.buf.clear();
        let body = postcard::to_stdvec(record).map_err(io::Error::other)?;
        let mut len = body.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                self.buf.push(byte);
                break;
            }
            self.buf.push(byte | 0x80);
        }
        self.zstd.write_all(&self.buf)?;
        self.zstd.write_all(&body)
    }

    /// Makes everything written so far readable from the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.zstd.flush()?;
        self.zstd.get_mut().flush()
    }

    /// Ends the stream; returns the file.
    pub fn finish(self) -> io::Result<File> {
        let file = self.zstd.finish()?;
        file.into_inner().map_err(io::IntoInnerError::into_error)
    }
}
