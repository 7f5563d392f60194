//! Huffman decoding of the entropy-coded segments: the tables, the bit reader, and the scans
//! (baseline, progressive DC and AC, first passes and refinements) into coefficient blocks.

use super::idct::idct_blocks;
use super::{corrupt, DecodeError, Frame, TRUNCATION_SLACK, ZIGZAG};

#[derive(Clone)]
pub(super) struct Huffman {
    /// Codes of up to `FAST_BITS` bits: `(length << 8) | symbol`, or 0.
    fast: Vec<u16>,
    /// For AC tables: when a code and its magnitude bits fit in `FAST_BITS` bits, the decoded
    /// `(value, run, total length)`; length 0 otherwise.
    fast_ac: Vec<(i16, u8, u8)>,
    /// Largest code of each length (−1 when none), for lengths 1..=16.
    maxcode: [i32; 18],
    /// `values` index of the first code of each length, minus that code.
    offset: [i32; 17],
    values: Vec<u8>,
}

const FAST_BITS: u32 = 9;

impl Huffman {
    pub(super) fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Huffman, DecodeError> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > values.len() || total > 256 {
            return Err(corrupt("bad Huffman table"));
        }
        let mut fast = vec![0u16; 1 << FAST_BITS];
        let mut maxcode = [-1i32; 18];
        let mut offset = [0i32; 17];
        let mut code = 0i32;
        let mut k = 0usize;
        for len in 1..=16usize {
            let n = counts[len - 1] as usize;
            offset[len] = k as i32 - code;
            for _ in 0..n {
                if len as u32 <= FAST_BITS {
                    let shift = FAST_BITS - len as u32;
                    for j in 0..(1 << shift) {
                        let idx = ((code as usize) << shift) | j;
                        if idx < fast.len() {
                            fast[idx] = ((len as u16) << 8) | values[k] as u16;
                        }
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                maxcode[len] = code - 1;
            }
            if code > (1 << len) {
                return Err(corrupt("bad Huffman table"));
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        let mut fast_ac = vec![(0i16, 0u8, 0u8); 1 << FAST_BITS];
        for (peek, f) in fast.iter().enumerate() {
            if *f == 0 {
                continue;
            }
            let (len, rs) = ((*f >> 8) as u32, *f as u8);
            let (run, size) = ((rs >> 4) as u32, (rs & 15) as u32);
            if size > 0 && len + size <= FAST_BITS {
                let v = ((peek as u32) >> (FAST_BITS - len - size)) & ((1 << size) - 1);
                let v = if v < (1 << (size - 1)) {
                    v as i32 - (1 << size) + 1
                } else {
                    v as i32
                };
                fast_ac[peek] = (v as i16, run as u8, (len + size) as u8);
            }
        }
        Ok(Huffman {
            fast,
            fast_ac,
            maxcode,
            offset,
            values,
        })
    }
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
    /// A marker was reached: feed zeros (libjpeg does the same) until the scan ends.
    at_marker: bool,
    /// Zero bytes fed past the end of the data.
    overrun: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Bits {
            data,
            pos,
            acc: 0,
            n: 0,
            at_marker: false,
            overrun: 0,
        }
    }

    #[inline(always)]
    fn refill(&mut self) {
        // Fast path: eight bytes without 0xFF need no unstuffing.
        if !self.at_marker && self.pos + 8 <= self.data.len() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.data[self.pos..self.pos + 8]);
            let w = u64::from_be_bytes(b);
            let nw = !w;
            if nw.wrapping_sub(0x0101_0101_0101_0101) & !nw & 0x8080_8080_8080_8080 == 0 {
                let k = (64 - self.n) / 8;
                let v = if k == 8 { w } else { w >> (64 - 8 * k) };
                self.acc |= v << (64 - self.n - 8 * k);
                self.n += 8 * k;
                self.pos += k as usize;
                return;
            }
        }
        while self.n <= 56 {
            let mut byte = 0u8;
            if !self.at_marker {
                if self.pos < self.data.len() {
                    let b = self.data[self.pos];
                    if b == 0xFF {
                        match self.data.get(self.pos + 1) {
                            Some(0) => {
                                byte = 0xFF;
                                self.pos += 2;
                            }
                            Some(_) => self.at_marker = true,
                            None => {
                                self.pos += 1;
                                self.overrun += 1;
                            }
                        }
                    } else {
                        byte = b;
                        self.pos += 1;
                    }
                } else {
                    self.overrun += 1;
                }
            }
            self.acc |= (byte as u64) << (56 - self.n);
            self.n += 8;
        }
    }

    #[inline(always)]
    fn bits(&mut self, k: u32) -> u32 {
        if k == 0 {
            return 0;
        }
        if self.n < k {
            self.refill();
        }
        let v = (self.acc >> (64 - k)) as u32;
        self.acc <<= k;
        self.n -= k;
        v
    }

    #[inline(always)]
    fn bit(&mut self) -> bool {
        self.bits(1) == 1
    }

    /// `s` bits, sign-extended as JPEG magnitude categories are.
    #[inline(always)]
    fn receive_extend(&mut self, s: u32) -> i32 {
        if s == 0 {
            return 0;
        }
        let v = self.bits(s) as i32;
        if v < (1 << (s - 1)) {
            v - (1 << s) + 1
        } else {
            v
        }
    }

    #[inline(always)]
    fn decode(&mut self, h: &Huffman) -> Result<u8, DecodeError> {
        if self.n < 16 {
            self.refill();
        }
        let peek = (self.acc >> (64 - FAST_BITS)) as usize;
        let f = h.fast[peek];
        if f != 0 {
            let len = (f >> 8) as u32;
            self.acc <<= len;
            self.n -= len;
            return Ok(f as u8);
        }
        let code16 = (self.acc >> 48) as i32;
        for len in (FAST_BITS as usize + 1)..=16 {
            let code = code16 >> (16 - len);
            if code <= h.maxcode[len] {
                self.acc <<= len;
                self.n -= len as u32;
                let idx = (code + h.offset[len]) as usize;
                return h
                    .values
                    .get(idx)
                    .copied()
                    .ok_or_else(|| corrupt("bad Huffman code"));
            }
        }
        Err(corrupt("bad Huffman code"))
    }

    /// Skip to the next restart marker and past it.
    fn restart(&mut self) -> Result<(), DecodeError> {
        self.acc = 0;
        self.n = 0;
        self.at_marker = false;
        // Find the marker (libjpeg tolerates garbage before it).
        while self.pos + 1 < self.data.len() {
            if self.data[self.pos] == 0xFF && (0xD0..=0xD7).contains(&self.data[self.pos + 1]) {
                self.pos += 2;
                return Ok(());
            }
            if self.data[self.pos] == 0xFF
                && self.data[self.pos + 1] != 0
                && self.data[self.pos + 1] != 0xFF
            {
                // Another marker: the restart marker is missing; continue from here.
                return Ok(());
            }
            self.pos += 1;
        }
        Err(corrupt("image data is truncated"))
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn decode_scan(
    f: &mut Frame,
    seg: &[u8],
    data: &[u8],
    pos: usize,
    qt: &[[u16; 64]; 4],
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    restart_interval: usize,
    eobrun: &mut u32,
) -> Result<usize, DecodeError> {
    let ns = *seg.first().ok_or_else(|| corrupt("short scan header"))? as usize;
    if ns == 0 || ns > 4 || seg.len() < 1 + 2 * ns + 3 {
        return Err(corrupt("bad scan header"));
    }
    let mut members = Vec::with_capacity(ns);
    for i in 0..ns {
        let id = seg[1 + 2 * i];
        let t = seg[2 + 2 * i];
        let ci = f
            .comps
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| corrupt("scan names an unknown component"))?;
        f.comps[ci].dc_table = (t >> 4) as usize & 3;
        f.comps[ci].ac_table = (t & 15) as usize & 3;
        members.push(ci);
    }
    let p = 1 + 2 * ns;
    let (ss, se, ah, al) = (
        seg[p] as usize,
        seg[p + 1] as usize,
        (seg[p + 2] >> 4) as u32,
        (seg[p + 2] & 15) as u32,
    );
    if f.progressive && (se > 63 || ss > se || (ss == 0 && se != 0) || (ss > 0 && ns != 1)) {
        return Err(corrupt("bad progressive scan parameters"));
    }
    for &ci in &members {
        f.comps[ci].pred = 0;
    }
    *eobrun = 0;
    let mut bits = Bits::new(data, pos);
    // One block per "MCU" in single-component scans; otherwise whole MCUs.
    let single = ns == 1;
    let (units_x, units_y) = if single {
        let c = &f.comps[members[0]];
        (c.w_samples.div_ceil(8), c.h_samples.div_ceil(8))
    } else {
        (f.mcus_x, f.mcus_y)
    };
    let total = units_x * units_y;
    let need_dc = |i: usize| {
        dc_tables[i]
            .as_ref()
            .ok_or_else(|| corrupt("missing Huffman table"))
    };
    let need_ac = |i: usize| {
        ac_tables[i]
            .as_ref()
            .ok_or_else(|| corrupt("missing Huffman table"))
    };
    let mut rowbuf: Vec<Vec<i16>> = if f.progressive {
        Vec::new()
    } else {
        members
            .iter()
            .map(|&ci| {
                let c = &f.comps[ci];
                vec![0i16; c.bw * if single { 1 } else { c.v } * 64]
            })
            .collect()
    };
    for unit in 0..total {
        if restart_interval > 0 && unit > 0 && unit % restart_interval == 0 {
            bits.restart()?;
            for &ci in &members {
                f.comps[ci].pred = 0;
            }
            *eobrun = 0;
        }
        let (ux, uy) = (unit % units_x, unit / units_x);
        for (mi, &ci) in members.iter().enumerate() {
            let (bh_n, bv_n) = if single {
                (1, 1)
            } else {
                (f.comps[ci].h, f.comps[ci].v)
            };
            for by in 0..bv_n {
                for bx in 0..bh_n {
                    let (col, row) = if single {
                        (ux, uy)
                    } else {
                        (ux * bh_n + bx, uy * bv_n + by)
                    };
                    let c = &mut f.comps[ci];
                    let (dci, aci) = (c.dc_table, c.ac_table);
                    if !f.progressive {
                        // Coefficients of one row of units, transformed when the row is done.
                        let i = ((row - uy * bv_n) * c.bw + col) * 64;
                        let blk: &mut [i16; 64] = (&mut rowbuf[mi][i..i + 64])
                            .try_into()
                            .expect("64 coefficients");
                        blk.fill(0);
                        decode_block_baseline(
                            &mut bits,
                            need_dc(dci)?,
                            need_ac(aci)?,
                            &mut c.pred,
                            blk,
                        )?;
                    } else {
                        let i = (row * c.bw + col) * 64;
                        let blk: &mut [i16; 64] = (&mut c.coefs[i..i + 64])
                            .try_into()
                            .expect("64 coefficients");
                        if ss == 0 {
                            if ah == 0 {
                                let s = bits.decode(need_dc(dci)?)? as u32;
                                if s > 15 {
                                    return Err(corrupt("bad DC coefficient"));
                                }
                                c.pred = c.pred.wrapping_add(bits.receive_extend(s));
                                blk[0] = (c.pred << al) as i16;
                            } else if bits.bit() {
                                blk[0] |= (1 << al) as i16;
                            }
                        } else if ah == 0 {
                            decode_ac_first(&mut bits, need_ac(aci)?, blk, ss, se, al, eobrun)?;
                        } else {
                            decode_ac_refine(&mut bits, need_ac(aci)?, blk, ss, se, al, eobrun)?;
                        }
                    }
                }
            }
        }
        if !f.progressive && (ux + 1 == units_x || unit + 1 == total) {
            for (mi, &ci) in members.iter().enumerate() {
                let c = &mut f.comps[ci];
                let rows = if single { 1 } else { c.v };
                let cols = if single { units_x } else { c.bw };
                let stride = c.bw * 8;
                let start = uy * rows * 8 * stride;
                let end = (start + rows * 8 * stride).min(c.plane.len());
                idct_blocks(
                    &rowbuf[mi][..rows * c.bw * 64],
                    cols,
                    c.bw,
                    &qt[c.tq],
                    &mut c.plane[start..end],
                );
            }
        }
        if bits.overrun > TRUNCATION_SLACK {
            return Err(corrupt("image data is truncated"));
        }
    }
    // Zero bytes read past the end of the file and consumed (not merely buffered) mean the
    // entropy-coded data ended early. (Zeros fed at a marker are libjpeg's normal padding.)
    if bits.overrun > (bits.n / 8) as usize {
        return Err(corrupt("image data is truncated"));
    }
    Ok(bits.pos.min(data.len()))
}

fn decode_block_baseline(
    bits: &mut Bits,
    dc: &Huffman,
    ac: &Huffman,
    pred: &mut i32,
    block: &mut [i16; 64],
) -> Result<(), DecodeError> {
    let s = bits.decode(dc)? as u32;
    if s > 15 {
        return Err(corrupt("bad DC coefficient"));
    }
    *pred = pred.wrapping_add(bits.receive_extend(s));
    block[0] = *pred as i16;
    let mut k = 1;
    while k < 64 {
        if bits.n < 16 {
            bits.refill();
        }
        let (v, run, len) = ac.fast_ac[(bits.acc >> (64 - FAST_BITS)) as usize];
        if len != 0 {
            bits.acc <<= len;
            bits.n -= len as u32;
            k += run as usize;
            if k > 63 {
                return Err(corrupt("bad AC coefficient run"));
            }
            block[ZIGZAG[k]] = v;
            k += 1;
            continue;
        }
        let rs = bits.decode(ac)?;
        let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
        if s != 0 {
            k += r;
            if k > 63 {
                return Err(corrupt("bad AC coefficient run"));
            }
            block[ZIGZAG[k]] = bits.receive_extend(s) as i16;
            k += 1;
        } else if r == 15 {
            k += 16;
        } else {
            break;
        }
    }
    Ok(())
}

fn decode_ac_first(
    bits: &mut Bits,
    ac: &Huffman,
    blk: &mut [i16; 64],
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) -> Result<(), DecodeError> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = ss;
    while k <= se {
        let rs = bits.decode(ac)?;
        let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
        if s != 0 {
            k += r;
            if k > 63 {
                return Err(corrupt("bad AC coefficient run"));
            }
            blk[ZIGZAG[k]] = (bits.receive_extend(s) << al) as i16;
            k += 1;
        } else if r < 15 {
            *eobrun = (1 << r) - 1;
            if r > 0 {
                *eobrun += bits.bits(r as u32);
            }
            break;
        } else {
            k += 16;
        }
    }
    Ok(())
}

fn decode_ac_refine(
    bits: &mut Bits,
    ac: &Huffman,
    blk: &mut [i16; 64],
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) -> Result<(), DecodeError> {
    let p1 = 1i16 << al;
    let m1 = (-1i16) << al;
    let mut k = ss;
    let refine = |bits: &mut Bits, c: &mut i16| {
        if bits.bit() && (*c & p1) == 0 {
            // libjpeg's coefficients are 16-bit and wrap the same way.
            *c = c.wrapping_add(if *c >= 0 { p1 } else { m1 });
        }
    };
    if *eobrun == 0 {
        while k <= se {
            let rs = bits.decode(ac)?;
            let (mut r, s) = ((rs >> 4) as i32, rs & 15);
            let mut value = 0i16;
            if s != 0 {
                value = if bits.bit() { p1 } else { m1 };
            } else if r != 15 {
                *eobrun = 1 << r;
                if r > 0 {
                    *eobrun += bits.bits(r as u32);
                }
                break;
            }
            while k <= se {
                let z = ZIGZAG[k];
                if blk[z] != 0 {
                    refine(bits, &mut blk[z]);
                } else {
                    if r == 0 {
                        break;
                    }
                    r -= 1;
                }
                k += 1;
            }
            if value != 0 && k <= 63 {
                blk[ZIGZAG[k]] = value;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            let z = ZIGZAG[k];
            if blk[z] != 0 {
                refine(bits, &mut blk[z]);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}
