//! The activations that the AVX-512 kernels (`product`'s tiles,
//! `depthwise`'s runs) apply to 16 outputs in registers before their one
//! store, each computing what `cpu::apply` computes, bit for bit.

use std::arch::x86_64::*;

use crate::models::channels_last::program::Act;

#[cfg(test)]
const LANES: usize = 16;

/// The activations applied in registers, each as `cpu::apply` computes
/// it (bit for bit); GELU is not among them (the kernels leave it to a
/// pass over their finished outputs).
#[derive(Clone, Copy)]
pub(super) enum InRegisters {
    None,
    /// `max(x, 0)`, 0 for NaN as `f32::max`.
    Relu,
    /// `x.clamp(0, 6)`, NaN kept as `f32::clamp`.
    Relu6,
    /// `x / (1 + exp(-a x))`: SiLU (`a` = 1), QuickGELU (1.702).
    XSigmoid(f32),
    Sigmoid,
}

impl InRegisters {
    /// `act` in registers, or `None` for one that is not.
    pub(super) fn of(act: Act) -> Option<InRegisters> {
        match act {
            Act::Identity => Some(InRegisters::None),
            Act::Relu => Some(InRegisters::Relu),
            Act::Relu6 => Some(InRegisters::Relu6),
            Act::Silu => Some(InRegisters::XSigmoid(1.0)),
            Act::QuickGelu => Some(InRegisters::XSigmoid(1.702)),
            Act::Sigmoid => Some(InRegisters::Sigmoid),
            Act::Gelu => None,
        }
    }

    /// The activation over 16 lanes.
    #[inline(always)]
    pub(super) unsafe fn apply(self, val: __m512) -> __m512 {
        // SAFETY: register operations only (AVX-512F, the caller's).
        unsafe {
            let (zero, one) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0));
            match self {
                InRegisters::None => val,
                // max(x, 0) gives its second operand for NaN.
                InRegisters::Relu => _mm512_max_ps(val, zero),
                // ... min(6, x) and max(0, x) keep a NaN x.
                InRegisters::Relu6 => _mm512_max_ps(zero, _mm512_min_ps(_mm512_set1_ps(6.0), val)),
                InRegisters::XSigmoid(a) => {
                    let e = exp16(_mm512_mul_ps(_mm512_set1_ps(-a), val));
                    _mm512_div_ps(val, _mm512_add_ps(one, e))
                }
                InRegisters::Sigmoid => _mm512_div_ps(one, _mm512_add_ps(one, exp16(negate(val)))),
            }
        }
    }
}

/// `act` over `xs` as the stores apply it, or `None` where they leave
/// it to a pass over the block (a test's view of `InRegisters`).
#[cfg(test)]
pub(super) fn in_registers(act: Act, xs: &[f32]) -> Option<Vec<f32>> {
    #[target_feature(enable = "avx512f")]
    unsafe fn run(act: InRegisters, xs: &[f32]) -> Vec<f32> {
        let mut out = xs.to_vec();
        for chunk in out.chunks_mut(LANES) {
            let mask: __mmask16 = ((1u32 << chunk.len()) - 1) as __mmask16;
            // SAFETY: masked to the chunk's lanes.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, chunk.as_ptr());
                _mm512_mask_storeu_ps(chunk.as_mut_ptr(), mask, act.apply(v));
            }
        }
        out
    }
    // SAFETY: the caller checked for AVX-512F.
    InRegisters::of(act).map(|act| unsafe { run(act, xs) })
}

/// `-x` on 16 lanes (the sign flipped, as f32 negation).
#[inline(always)]
unsafe fn negate(x: __m512) -> __m512 {
    // SAFETY: register operations only.
    unsafe {
        let sign = _mm512_set1_epi32(i32::MIN);
        _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), sign))
    }
}

/// `cpu::exp_fast::<true>` on 16 lanes: the same operations in the
/// same order, so the same bits.
#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    use crate::models::channels_last::cpu::{EXP_POLY, EXP_ROUND, LN2_HI, LN2_LO};
    // SAFETY: register operations only.
    unsafe {
        let set = _mm512_set1_ps;
        // clamp(-87, 88), a NaN kept (max and min return their second
        // operand for NaN).
        let x = _mm512_min_ps(set(88.0), _mm512_max_ps(set(-87.0), x));
        let t = _mm512_fmadd_ps(x, set(std::f32::consts::LOG2_E), set(EXP_ROUND));
        let n = _mm512_sub_ps(t, set(EXP_ROUND));
        let ni = _mm512_sub_epi32(
            _mm512_castps_si512(t),
            _mm512_set1_epi32(EXP_ROUND.to_bits() as i32),
        );
        let r = _mm512_fmadd_ps(n, set(LN2_LO), _mm512_fmadd_ps(n, set(LN2_HI), x));
        let mut p = set(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, set(c));
        }
        let y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, set(1.0)));
        let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127)));
        _mm512_mul_ps(y, _mm512_castsi512_ps(scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 stores' activations give `cpu::apply`'s bits, lane for
    /// lane (where the CPU has AVX-512).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn activations_in_registers_match_the_epilogue_bit_for_bit() {
        if !super::super::avx512() {
            return;
        }
        let xs: Vec<f32> = (-12000..12000)
            .map(|i| i as f32 / 97.0)
            .chain([f32::NAN, 0.0, -0.0, 1e-30, -100.0, 100.0, f32::INFINITY])
            .collect();
        for act in [
            Act::Identity,
            Act::Relu,
            Act::Relu6,
            Act::Silu,
            Act::QuickGelu,
            Act::Sigmoid,
        ] {
            let mut want = xs.clone();
            crate::models::channels_last::cpu::apply::<true>(&mut want, act);
            let got = in_registers(act, &xs).expect("applied in registers");
            for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{act:?}({x}): {g} vs {w}"
                );
            }
        }
        assert!(in_registers(Act::Gelu, &xs).is_none());
    }
}
