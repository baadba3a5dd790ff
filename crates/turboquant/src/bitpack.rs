//! Packing of b-bit indices (1 ≤ b ≤ 8) into bytes.
//!
//! Layout (little-endian bit order, no padding between indices): index i occupies bits
//! [i·b, (i+1)·b) of the byte stream, where bit k of the stream is bit (k mod 8) of byte k / 8
//! (bit 0 = least significant). The last byte is zero-padded. A vector of n indices takes
//! ⌈n·b/8⌉ bytes ([`packed_len`]). C code reads index i as
//! `((bytes[k/8] | bytes[k/8+1] << 8) >> (k % 8)) & ((1 << b) - 1)` with `k = i*b`.

use crate::codebook::check_bits;
use crate::error::{check_len, Error, Result};

/// The number of bytes that `count` indices of `bits` bits take: ⌈count·bits/8⌉ (saturating
/// at `usize::MAX` for absurd counts).
pub fn packed_len(count: usize, bits: u8) -> usize {
    count
        .checked_mul(bits as usize)
        .map_or(usize::MAX, |total| total.div_ceil(8))
}

/// Packs `indices` (each < 2^bits) into a new byte vector.
pub fn pack(indices: &[u8], bits: u8) -> Result<Vec<u8>> {
    check_bits(bits)?;
    let mut out = vec![0; packed_len(indices.len(), bits)];
    pack_into(indices, bits, &mut out)?;
    Ok(out)
}

/// Packs `indices` into `out`, which must be exactly [`packed_len`] bytes long.
pub fn pack_into(indices: &[u8], bits: u8, out: &mut [u8]) -> Result<()> {
    check_bits(bits)?;
    check_len("packed output", packed_len(indices.len(), bits), out.len())?;
    if bits < 8 {
        if let Some(&bad) = indices.iter().find(|&&i| i >> bits != 0) {
            return Err(Error::InvalidInput(format!(
                "index {bad} does not fit in {bits} bits"
            )));
        }
    }
    pack_unchecked(indices, bits, out);
    Ok(())
}

/// Unpacks `count` indices of `bits` bits from `bytes` (at least [`packed_len`] bytes).
pub fn unpack(bytes: &[u8], bits: u8, count: usize) -> Result<Vec<u8>> {
    let mut out = vec![0; count];
    unpack_into(bytes, bits, &mut out)?;
    Ok(out)
}

/// Unpacks `out.len()` indices from `bytes`, which must hold at least [`packed_len`] bytes.
pub fn unpack_into(bytes: &[u8], bits: u8, out: &mut [u8]) -> Result<()> {
    check_bits(bits)?;
    let needed = packed_len(out.len(), bits);
    if bytes.len() < needed {
        return Err(Error::LengthMismatch {
            what: "packed input",
            expected: needed,
            actual: bytes.len(),
        });
    }
    unpack_unchecked(&bytes[..needed], bits, out);
    Ok(())
}

/// The index at position `i` of a packed stream, or an error if it is out of range.
pub fn get(bytes: &[u8], bits: u8, i: usize) -> Result<u8> {
    check_bits(bits)?;
    if packed_len(i.saturating_add(1), bits) > bytes.len() {
        return Err(Error::InvalidInput(format!(
            "index position {i} is past the end of {} packed bytes",
            bytes.len()
        )));
    }
    let k = i * bits as usize;
    let lo = bytes[k / 8] as u16;
    let hi = bytes.get(k / 8 + 1).copied().unwrap_or(0) as u16;
    Ok((((lo | hi << 8) >> (k % 8)) & ((1u16 << bits) - 1)) as u8)
}

pub(crate) fn pack_unchecked(indices: &[u8], bits: u8, out: &mut [u8]) {
    debug_assert_eq!(out.len(), packed_len(indices.len(), bits));
    if bits == 8 {
        out.copy_from_slice(indices);
        return;
    }
    let mut acc: u32 = 0;
    let mut filled = 0u32;
    let mut o = 0;
    for &index in indices {
        acc |= (index as u32) << filled;
        filled += bits as u32;
        while filled >= 8 {
            out[o] = acc as u8;
            o += 1;
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        out[o] = acc as u8;
    }
}

pub(crate) fn unpack_unchecked(bytes: &[u8], bits: u8, out: &mut [u8]) {
    debug_assert!(bytes.len() >= packed_len(out.len(), bits));
    match bits {
        8 => out.copy_from_slice(&bytes[..out.len()]),
        1 | 2 | 4 => {
            // Indices never straddle bytes: a simple per-byte split.
            let per_byte = 8 / bits as usize;
            let mask = (1u8 << bits) - 1;
            for (chunk, &byte) in out.chunks_mut(per_byte).zip(bytes) {
                for (k, o) in chunk.iter_mut().enumerate() {
                    *o = (byte >> (k * bits as usize)) & mask;
                }
            }
        }
        _ => {
            // Eight indices fill exactly `bits` bytes: decode whole groups from a u64.
            let b = bits as usize;
            let mask64 = (1u64 << bits) - 1;
            let groups = out.len() / 8;
            for (group, chunk) in out[..groups * 8]
                .chunks_exact_mut(8)
                .zip(bytes.chunks_exact(b))
            {
                let mut word = [0u8; 8];
                word[..b].copy_from_slice(chunk);
                let word = u64::from_le_bytes(word);
                for (k, o) in group.iter_mut().enumerate() {
                    *o = ((word >> (k * b)) & mask64) as u8;
                }
            }
            let mask = (1u32 << bits) - 1;
            let mut acc: u32 = 0;
            let mut filled = 0u32;
            let mut bytes = bytes[groups * b..].iter();
            for o in out[groups * 8..].iter_mut() {
                while filled < bits as u32 {
                    acc |= (*bytes.next().unwrap_or(&0) as u32) << filled;
                    filled += 8;
                }
                *o = (acc & mask) as u8;
                acc >>= bits;
                filled -= bits as u32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{SeededRng, Stream};

    #[test]
    fn round_trip_every_width() {
        let mut rng = SeededRng::new(5, Stream::Data);
        for bits in 1..=8u8 {
            for count in [0usize, 1, 2, 3, 7, 8, 9, 31, 64, 127, 128, 1000] {
                let indices: Vec<u8> = (0..count)
                    .map(|_| (rng.next_u64() & ((1u64 << bits) - 1)) as u8)
                    .collect();
                let packed = pack(&indices, bits).unwrap();
                assert_eq!(packed.len(), (count * bits as usize).div_ceil(8));
                assert_eq!(unpack(&packed, bits, count).unwrap(), indices);
                for (i, &idx) in indices.iter().enumerate() {
                    assert_eq!(get(&packed, bits, i).unwrap(), idx);
                }
            }
        }
    }

    #[test]
    fn documented_layout() {
        // 3-bit indices 5, 3, 7: bits 101 | 011 << 3 | 111 << 6 = 0b1_1101_1101 -> [0xDD, 0x01].
        assert_eq!(pack(&[5, 3, 7], 3).unwrap(), vec![0xDD, 0x01]);
        assert_eq!(pack(&[1, 0, 1, 1], 1).unwrap(), vec![0b1101]);
        assert_eq!(pack(&[0xA, 0x5], 4).unwrap(), vec![0x5A]);
    }

    #[test]
    fn errors() {
        assert!(pack(&[4], 2).is_err());
        assert!(pack(&[0], 0).is_err());
        assert!(pack(&[0], 9).is_err());
        assert!(unpack(&[0], 3, 3).is_err());
        assert!(get(&[0xFF], 3, 2).is_err());
        assert!(pack_into(&[1, 2], 4, &mut [0; 2]).is_err());
    }
}
