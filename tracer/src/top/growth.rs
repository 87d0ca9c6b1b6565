//! The growth mark of a location in `tracer top`: whether its live bytes
//! keep growing over the last refreshes, and how fast. A `GrowthAnalysis`
//! is pluggable: the trend here is the default, and a longer-window
//! analysis (the daemon's growth report) can stand in for it.

/// What a growth analysis says of one location.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mark {
    /// Bytes per second the live bytes grow by.
    pub rate: f64,
}

/// Tells growing locations from the others.
pub trait GrowthAnalysis: Send {
    /// `history`: live bytes at each refresh, oldest first, `interval_s`
    /// apart. `None`: not growing (or not known yet).
    fn mark(&self, history: &[u64], interval_s: f64) -> Option<Mark>;
}

/// Growing: live bytes rose in at least three quarters of the last steps
/// (at least `min_points` refreshes), and are higher at the end than at
/// the start; the rate is the least-squares slope.
pub struct Trend {
    pub min_points: usize,
}

impl Default for Trend {
    fn default() -> Self {
        Self { min_points: 4 }
    }
}

impl GrowthAnalysis for Trend {
    fn mark(&self, history: &[u64], interval_s: f64) -> Option<Mark> {
        if history.len() < self.min_points || interval_s <= 0.0 {
            return None;
        }
        let steps = history.len() - 1;
        let rising = history.windows(2).filter(|w| w[1] > w[0]).count();
        let (first, last) = (*history.first()?, *history.last()?);
        if rising * 4 < steps * 3 || last <= first {
            return None;
        }
        let n = history.len() as f64;
        let mean_x = (n - 1.0) / 2.0;
        let mean_y = history.iter().map(|&v| v as f64).sum::<f64>() / n;
        let (mut num, mut den) = (0.0, 0.0);
        for (i, &v) in history.iter().enumerate() {
            let dx = i as f64 - mean_x;
            num += dx * (v as f64 - mean_y);
            den += dx * dx;
        }
        let slope = num / den / interval_s;
        (slope > 0.0).then_some(Mark { rate: slope })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_steady_growth_only() {
        let t = Trend::default();
        let growing = [100, 200, 300, 400, 500];
        let mark = t.mark(&growing, 0.5).expect("growing");
        assert!((mark.rate - 200.0).abs() < 1e-9, "{mark:?}");
        assert_eq!(t.mark(&[100, 200, 300], 1.0), None, "too few points");
        assert_eq!(t.mark(&[500, 400, 500, 400, 500], 1.0), None, "oscillating");
        assert_eq!(t.mark(&[500, 500, 500, 500], 1.0), None, "flat");
        // One dip in five steps still grows.
        assert!(t.mark(&[100, 200, 150, 300, 400, 500], 1.0).is_some());
    }
}
