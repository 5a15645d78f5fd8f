//! A bounds-checked cursor over a byte slice: the only way the parsers read input.
//!
//! Every read checks the length first and fails with [`FormatError::Truncated`], so no parser
//! indexes a slice directly and none can panic on short input.

use super::FormatError;

/// A cursor over `data` that names the structure it reads in its errors.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `data`; `what` names the structure in errors.
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        Reader { data, pos: 0, what }
    }

    /// The offset of the next byte to read.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// How many bytes are left.
    pub(crate) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// The bytes not read yet (without consuming them).
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }

    /// The next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.data.get(self.pos..end).map(|s| (s, end)));
        match slice {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(FormatError::Truncated {
                what: self.what,
                need: self.pos.saturating_add(n),
                have: self.data.len(),
            }),
        }
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let what = self.what;
        let have = self.data.len();
        let need = self.pos.saturating_add(N);
        <[u8; N]>::try_from(self.bytes(N)?).map_err(|_| FormatError::Truncated { what, need, have })
    }

    /// Skips `n` bytes (reserved fields).
    pub(crate) fn skip(&mut self, n: usize) -> Result<(), FormatError> {
        self.bytes(n).map(|_| ())
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    /// A little-endian `u16`.
    pub(crate) fn u16_le(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian `u32`.
    pub(crate) fn u32_le(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian `u64`.
    pub(crate) fn u64_le(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A big-endian `u16` (TPM structures are big-endian).
    pub(crate) fn u16_be(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian `u32`.
    pub(crate) fn u32_be(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian `u64`.
    pub(crate) fn u64_be(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Fails with [`FormatError::TrailingBytes`] unless every byte has been read.
    pub(crate) fn finish(&self) -> Result<(), FormatError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(FormatError::TrailingBytes {
                what: self.what,
                extra,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_reports_truncation() {
        let data = [1, 0, 0, 0, 0xAA, 0xBB];
        let mut r = Reader::new(&data, "test");
        assert_eq!(r.u32_le().unwrap(), 1);
        assert_eq!(r.u16_be().unwrap(), 0xAABB);
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(
            r.u8(),
            Err(FormatError::Truncated {
                what: "test",
                need: 7,
                have: 6
            })
        );
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let mut r = Reader::new(&[0; 4], "test");
        r.skip(2).unwrap();
        assert!(matches!(
            r.bytes(usize::MAX),
            Err(FormatError::Truncated {
                need: usize::MAX,
                ..
            })
        ));
        assert_eq!(r.position(), 2);
        assert_eq!(
            r.finish(),
            Err(FormatError::TrailingBytes {
                what: "test",
                extra: 2
            })
        );
    }
}
