//! Destinations drawn with a Zipf skew: one (gmail.com) takes 2/3 of the
//! recipients, the rest spread over `n` domains by 1/k. Shared by the
//! criterion suite and `examples/schedule.rs`.

/// A deterministic Zipf sampler of recipient domains.
pub struct Zipf(Vec<f64>, u64);

impl Zipf {
    /// Over `n` domains besides gmail.com.
    pub fn new(n: usize) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 1..n {
            acc += 1.0 / k as f64;
            cdf.push(acc);
        }
        cdf.iter_mut().for_each(|c| *c /= acc);
        Zipf(cdf, 0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        self.1 ^= self.1 << 13;
        self.1 ^= self.1 >> 7;
        self.1 ^= self.1 << 17;
        (self.1 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next recipient's domain.
    pub fn domain(&mut self) -> String {
        if self.unit() < 2.0 / 3.0 {
            return "gmail.com".into();
        }
        let u = self.unit();
        format!("d{}.example", 1 + self.0.partition_point(|&c| c < u))
    }
}
