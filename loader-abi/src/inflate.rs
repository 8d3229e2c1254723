//! Bounded, streaming inflation of a compressed item (`KERZ`, `INRZ`: docs/bootstrap.md §2.1).
//!
//! The receiver knows two lengths before the first compressed byte: the zlib stream's length
//! on the wire and the inflated length the sender declared (already checked against the room
//! left in the arena). [`Inflater`] writes into exactly that many bytes of the destination,
//! takes the stream in whatever pieces the connection delivers, and refuses, with an
//! [`InflateError`], a stream that would write one byte more (a "bomb"), ends short of the
//! declared length, needs more bytes than the item has, leaves bytes after its end, is not
//! valid zlib, or fails its Adler-32. No allocation: the decompressor's state (about 11 KB)
//! lives in the `Inflater`, and the destination is the 32 KiB window (non-wrapping output).
//!
//! Only with the `inflate` feature (it brings in `miniz_oxide` without its allocator).

use crate::upload::InflateError;
use miniz_oxide::inflate::core::{decompress, inflate_flags as fl, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

/// Inflates one zlib stream of a known length into a slice of the declared inflated length.
pub struct Inflater<'a> {
    out: &'a mut [u8],
    pos: usize,
    zlen: usize,
    /// Compressed bytes not yet given to [`Inflater::feed`].
    left: usize,
    /// Compressed bytes the decompressor consumed.
    used: usize,
    /// The stream's first two bytes (CMF, FLG), to name a preset dictionary.
    head: [u8; 2],
    done: bool,
    state: DecompressorOxide,
}

impl<'a> Inflater<'a> {
    /// Inflate a stream of `zlen` bytes into all of `out` (its length is the declared one).
    pub fn new(out: &'a mut [u8], zlen: usize) -> Self {
        Inflater {
            out,
            pos: 0,
            zlen,
            left: zlen,
            used: 0,
            head: [0; 2],
            done: false,
            state: DecompressorOxide::new(),
        }
    }

    /// Compressed bytes still due.
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// Bytes inflated so far.
    pub fn inflated(&self) -> usize {
        self.pos
    }

    fn declared(&self) -> u32 {
        self.out.len() as u32
    }

    /// The next piece of the stream, at most [`Inflater::remaining`] bytes (more is refused
    /// as bytes after the end). Work is bounded by the piece and the destination.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), InflateError> {
        if chunk.len() > self.left {
            return Err(InflateError::Trailing {
                bytes: chunk.len() - self.left,
            });
        }
        for (i, &b) in chunk
            .iter()
            .enumerate()
            .take(2usize.saturating_sub(self.zlen - self.left))
        {
            self.head[self.zlen - self.left + i] = b;
        }
        self.left -= chunk.len();
        let mut input = chunk;
        if self.done {
            return match input.len() + self.left {
                0 => Ok(()),
                n => Err(InflateError::Trailing { bytes: n }),
            };
        }
        loop {
            if input.is_empty() && self.left > 0 {
                return Ok(());
            }
            let last = self.left == 0;
            let flags = fl::TINFL_FLAG_PARSE_ZLIB_HEADER
                | fl::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF
                | if last {
                    0
                } else {
                    fl::TINFL_FLAG_HAS_MORE_INPUT
                };
            let (status, n_in, n_out) =
                decompress(&mut self.state, input, self.out, self.pos, flags);
            self.pos += n_out;
            self.used += n_in;
            input = &input[n_in..];
            match status {
                TINFLStatus::Done => {
                    self.done = true;
                    return match (input.len() + self.left, self.pos) {
                        (0, p) if p == self.out.len() => Ok(()),
                        (0, got) => Err(InflateError::Short {
                            got,
                            declared: self.declared(),
                        }),
                        (bytes, _) => Err(InflateError::Trailing { bytes }),
                    };
                }
                // Everything given was consumed; the next piece goes on.
                TINFLStatus::NeedsMoreInput => {}
                TINFLStatus::HasMoreOutput => {
                    // The destination is full. miniz also says so when only the end of the
                    // block is still to be read; more input settles it: a call that consumes
                    // nothing, or the last piece, means the stream really wants to write more.
                    if n_in == 0 || last {
                        return Err(InflateError::TooLong {
                            declared: self.declared(),
                        });
                    }
                }
                TINFLStatus::FailedCannotMakeProgress => {
                    return Err(InflateError::Truncated {
                        zlen: self.zlen,
                        out: self.pos,
                    })
                }
                TINFLStatus::Adler32Mismatch => return Err(InflateError::Checksum),
                _ => {
                    if self.zlen - self.left >= 2 && self.head[1] & 0x20 != 0 {
                        return Err(InflateError::Dictionary);
                    }
                    return Err(InflateError::Corrupt {
                        at: self.used,
                        out: self.pos,
                    });
                }
            }
            if n_in == 0 && n_out == 0 && !input.is_empty() {
                // Cannot happen with miniz's contract; never spin on it.
                return Err(InflateError::Corrupt {
                    at: self.used,
                    out: self.pos,
                });
            }
        }
    }

    /// After the whole stream was fed: the inflated bytes, all of the declared length.
    pub fn finish(self) -> Result<&'a mut [u8], InflateError> {
        if self.done {
            Ok(self.out)
        } else {
            Err(InflateError::Truncated {
                zlen: self.zlen,
                out: self.pos,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use miniz_oxide::deflate::compress_to_vec_zlib;
    use std::string::ToString;
    use std::vec;
    use std::vec::Vec;

    fn data() -> Vec<u8> {
        // Compressible but not trivial: an ELF-ish header, text, a run of zeros, noise.
        let mut d = b"\x7fELF\x02\x01\x01".to_vec();
        for i in 0..20_000u32 {
            d.extend_from_slice(std::format!("line {i} of the kernel\n").as_bytes());
        }
        d.resize(d.len() + 70_000, 0);
        let mut x = 0x1234_5678u32;
        for _ in 0..30_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            d.push(x as u8);
        }
        d
    }

    fn run(z: &[u8], declared: usize, chunk: usize) -> Result<Vec<u8>, InflateError> {
        let mut out = vec![0xaa; declared];
        let mut inf = Inflater::new(&mut out, z.len());
        for c in z.chunks(chunk.max(1)) {
            inf.feed(c)?;
        }
        inf.finish().map(|o| o.to_vec())
    }

    #[test]
    fn round_trip_in_any_pieces() {
        let d = data();
        for level in [1, 6, 9] {
            let z = compress_to_vec_zlib(&d, level);
            for chunk in [1, 7, 1460, 4096, 65536, z.len()] {
                assert_eq!(
                    run(&z, d.len(), chunk).unwrap(),
                    d,
                    "level {level} chunk {chunk}"
                );
            }
        }
        // Empty data is a valid item too.
        let z = compress_to_vec_zlib(b"", 6);
        assert_eq!(z.len(), 8);
        assert_eq!(run(&z, 0, 3).unwrap(), b"");
    }

    #[test]
    fn every_split_of_a_small_stream_works() {
        // The destination fills before the end-of-block code arrives at some split points.
        let d = b"hello hello hello hello, kernel".to_vec();
        for level in [0, 1, 9] {
            let z = compress_to_vec_zlib(&d, level);
            for cut in 0..=z.len() {
                let mut out = vec![0; d.len()];
                let mut inf = Inflater::new(&mut out, z.len());
                inf.feed(&z[..cut]).unwrap();
                inf.feed(&z[cut..]).unwrap();
                assert_eq!(inf.finish().unwrap(), &d[..], "level {level} cut {cut}");
            }
        }
    }

    #[test]
    fn a_bomb_stops_at_the_declared_length() {
        // 16 MiB of zeros in ~16 KB: declared as 1 MiB, refused after writing 1 MiB.
        let big = vec![0u8; 16 << 20];
        let z = compress_to_vec_zlib(&big, 9);
        assert!(z.len() < 100_000);
        for chunk in [512, 65536, z.len()] {
            let e = run(&z, 1 << 20, chunk).unwrap_err();
            assert_eq!(e, InflateError::TooLong { declared: 1 << 20 });
            assert_eq!(
                e.to_string(),
                "the zlib stream inflates to more than the declared 1048576 bytes"
            );
        }
        // One byte more than declared is already too long.
        let d = data();
        let z = compress_to_vec_zlib(&d, 6);
        for chunk in [1, 1000, z.len()] {
            assert_eq!(
                run(&z, d.len() - 1, chunk),
                Err(InflateError::TooLong {
                    declared: d.len() as u32 - 1
                })
            );
        }
    }

    #[test]
    fn short_truncated_trailing_corrupt_are_refused() {
        let d = data();
        let z = compress_to_vec_zlib(&d, 6);
        assert_eq!(
            run(&z, d.len() + 1, 4096),
            Err(InflateError::Short {
                got: d.len(),
                declared: d.len() as u32 + 1
            })
        );
        // Truncated: the item ends before the stream does.
        for cut in [0, 1, 2, 100, z.len() - 4, z.len() - 1] {
            let e = run(&z[..cut], d.len(), 4096).unwrap_err();
            assert!(
                matches!(e, InflateError::Truncated { .. }),
                "cut {cut}: {e:?}"
            );
        }
        // Trailing bytes inside the item.
        let mut t = z.clone();
        t.extend_from_slice(b"xyz");
        assert_eq!(
            run(&t, d.len(), 4096),
            Err(InflateError::Trailing { bytes: 3 })
        );
        assert_eq!(
            run(&t, d.len(), 1),
            Err(InflateError::Trailing { bytes: 3 })
        );
        // Feeding more than the item's length.
        let mut out = vec![0; 4];
        let mut inf = Inflater::new(&mut out, 2);
        assert_eq!(inf.feed(b"abc"), Err(InflateError::Trailing { bytes: 1 }));
        // Damaged checksum, damaged data, bad header, preset dictionary.
        let mut c = z.clone();
        let n = c.len();
        c[n - 1] ^= 1;
        assert_eq!(run(&c, d.len(), 4096), Err(InflateError::Checksum));
        let mut c = z.clone();
        c[0] = 0x79;
        assert!(matches!(
            run(&c, d.len(), 4096),
            Err(InflateError::Corrupt { at: _, out: 0 })
        ));
        let dict = [0x78, 0xbb, 0, 0, 0, 1, 3, 0, 0, 0, 0, 1];
        assert_eq!((0x78u32 * 256 + 0xbb) % 31, 0);
        assert_eq!(run(&dict, 10, 3), Err(InflateError::Dictionary));
        // Random damage anywhere: refused or, rarely, a different valid stream, never a panic.
        let mut x = 7u32;
        for _ in 0..300 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let mut c = z.clone();
            let i = (x as usize >> 4) % c.len();
            c[i] ^= 1 << (x % 8);
            let _ = run(&c, d.len(), 1 + (x as usize % 5000));
        }
    }
}
