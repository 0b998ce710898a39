//! Choosing the next token from a row of logits: greedy, or temperature with top-k / top-p.

use crate::model::argmax;

/// How to pick the next token.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// A sampler with its own random state (xorshift64*, so runs repeat with the same seed).
pub struct Sampler {
    cfg: SamplerConfig,
    rng: u64,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        let rng = cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Sampler { cfg, rng }
    }

    /// True when the sampler is plain argmax, so the device can pick the token itself.
    pub fn is_greedy(&self) -> bool {
        self.cfg.temperature <= 0.0
    }

    fn next_f32(&mut self) -> f32 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Picks a token id from `logits` (`[vocab]`).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        let mut idx: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
        if idx.is_empty() {
            return argmax(logits);
        }
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if self.cfg.top_k > 0 {
            idx.truncate(self.cfg.top_k);
        }
        let m = logits[idx[0]];
        let mut probs: Vec<f32> = idx
            .iter()
            .map(|&i| ((logits[i] - m) / self.cfg.temperature).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    acc += p;
                    acc >= self.cfg.top_p
                })
                .map_or(probs.len(), |k| k + 1);
            probs.truncate(keep);
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let r = self.next_f32();
        let mut acc = 0.0;
        for (k, p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return idx[k] as u32;
            }
        }
        idx[probs.len() - 1] as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_and_top_k_1_is_greedy() {
        let logits = [0.1, 3.0, -2.0, 2.9];
        assert_eq!(Sampler::new(SamplerConfig::default()).sample(&logits), 1);
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        });
        assert!((0..20).all(|_| s.sample(&logits) == 1));
    }

    #[test]
    fn temperature_sampling_follows_the_distribution() {
        // p(1) = e^1 / (e^1 + e^0) ≈ 0.731
        let logits = [0.0, 1.0];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        });
        let ones = (0..20000).filter(|_| s.sample(&logits) == 1).count() as f32 / 20000.0;
        assert!((ones - 0.731).abs() < 0.02, "{ones}");
    }

    #[test]
    fn top_p_drops_the_tail() {
        let logits = [5.0, 0.0, 0.0, 0.0];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_p: 0.5,
            seed: 3,
            ..Default::default()
        });
        assert!((0..200).all(|_| s.sample(&logits) == 0));
    }
}
