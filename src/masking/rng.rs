//! The counter-based generator behind every mask (issue 4, item 2): a value is a pure function of
//! (seed, step, image, stream, index), so the GPU kernels and this CPU twin draw the same numbers
//! in any order, and a run is reproducible. Only u32 arithmetic: WGSL has no u64 and no mulhi.
//! The WGSL copies (`shaders/cluster_mask.wgsl`, `shaders/random_mask.wgsl`) must match
//! `hash_u32` and `MaskRng::bits24` bit for bit; `tests/masking_gpu_shaders.rs` checks both.

/// Bits of a uniform draw: 24, so `bits24 as f32 / 2^24` is exact in an f32.
pub const UNIFORM_BITS: u32 = 24;

/// Starting state of the hash chain; any odd constant away from 0 (lowbias32 fixes 0).
const CHAIN_START: u32 = 0x9e37_79b9;

/// Independent random streams of one (seed, step, image): one per use, so choosing anchors does
/// not correlate with choosing kept patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Stream {
    /// Anchor choice of cluster masking (M3.2).
    Anchor = 0,
    /// Choice among extra unmasked / restored masked patches (M3.4).
    Keep = 1,
    /// FLIP noise (M4).
    Random = 2,
}

/// Chris Wellons' `lowbias32` integer hash: a bijection on u32 with low avalanche bias.
pub fn hash_u32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The generator of one training step: seed of the run, the step counter, and the index of
/// the batch's first image in the step's global batch, so that with several ranks an image is
/// keyed by its global index and a run's masks do not depend on the number of ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskRng {
    pub seed: u64,
    pub step: u32,
    pub first_image: u32,
}

impl MaskRng {
    pub fn new(seed: u64, step: u32) -> Self {
        Self {
            seed,
            step,
            first_image: 0,
        }
    }

    /// This generator for the part of a global batch that starts at image `first_image`.
    pub fn from_image(self, first_image: u32) -> Self {
        Self {
            first_image,
            ..self
        }
    }

    /// The seed as the two u32 words the shaders receive: (low, high).
    pub fn seed_words(&self) -> [u32; 2] {
        [self.seed as u32, (self.seed >> 32) as u32]
    }

    /// A uniform integer in [0, 2^24): one hash per key word, then one finishing round so that
    /// neighbouring indices are fully mixed.
    pub fn bits24(&self, image: u32, stream: Stream, index: u32) -> u32 {
        let [seed_lo, seed_hi] = self.seed_words();
        let image = self.first_image.wrapping_add(image);
        let key = [seed_lo, seed_hi, self.step, image, stream as u32, index];
        let chained = key.iter().fold(CHAIN_START, |h, &word| hash_u32(h ^ word));
        hash_u32(chained) >> (32 - UNIFORM_BITS)
    }

    /// A uniform f32 in [0, 1) with 24 random bits (exact: every value is k / 2^24).
    pub fn uniform(&self, image: u32, stream: Stream, index: u32) -> f32 {
        self.bits24(image, stream, index) as f32 / (1u32 << UNIFORM_BITS) as f32
    }
}

/// Indices of the `count` smallest keys, ties broken by the lower index, in ascending index
/// order. The GPU ranks the same way: rank_j = #{i : (key_i, i) < (key_j, j)}, keep rank < count.
pub fn smallest_keys(keys: &[u32], count: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    order.sort_unstable_by_key(|&j| (keys[j as usize], j));
    order.truncate(count);
    order.sort_unstable();
    order
}
