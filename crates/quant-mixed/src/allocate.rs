//! Exact bit allocation under a budget: a multiple-choice knapsack solved by a dynamic
//! programme over Pareto frontiers of (cost, sensitivity).

use crate::error::{MixedError, Result};

/// One candidate for one layer: its width, grouping, exact cost and sensitivity.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LayerOption {
    /// Bits per weight code (32 for an unquantized layer).
    pub bits: u8,
    /// Elements per group when the option is group-wise.
    pub group_size: Option<usize>,
    /// Storage in bytes, tables included.
    pub bytes: u64,
    /// Bit-operations (`MACs · weight bits · activation bits`), 0 when not used.
    pub bops: u64,
    /// The sensitivity this option adds to the objective (for example
    /// `Tr(H)/n · ‖Q(W) − W‖²`); must be finite and `≥ 0`.
    pub sensitivity: f64,
}

/// A layer to allocate: its candidates and width constraints.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LayerSpec {
    /// The layer's name.
    pub name: String,
    /// Its parameter count (for the f32 size the compression ratio is measured against).
    pub params: u64,
    /// Its candidates.
    pub options: Vec<LayerOption>,
    /// Only options with exactly this width (Q-BERT keeps embeddings at 8 bits and the
    /// classifier at 32).
    pub fixed_bits: Option<u8>,
    /// Only options with at least this width.
    pub min_bits: Option<u8>,
    /// Only options with at most this width.
    pub max_bits: Option<u8>,
    /// Whether the layer's curvature was negative (carried into the allocation's report).
    pub negative_curvature: bool,
}

impl LayerSpec {
    /// A layer with its candidates and no constraints.
    pub fn new(name: impl Into<String>, params: u64, options: Vec<LayerOption>) -> Self {
        Self { name: name.into(), params, options, fixed_bits: None, min_bits: None, max_bits: None, negative_curvature: false }
    }
    /// Restricts the layer to options of width `bits`.
    pub fn fixed(mut self, bits: u8) -> Self {
        self.fixed_bits = Some(bits);
        self
    }
    /// Restricts the layer to widths `≥ bits`.
    pub fn min(mut self, bits: u8) -> Self {
        self.min_bits = Some(bits);
        self
    }
    /// Restricts the layer to widths `≤ bits`.
    pub fn max(mut self, bits: u8) -> Self {
        self.max_bits = Some(bits);
        self
    }
    fn allows(&self, bits: u8) -> bool {
        self.fixed_bits.is_none_or(|f| bits == f) && self.min_bits.is_none_or(|m| bits >= m) && self.max_bits.is_none_or(|m| bits <= m)
    }
}

/// The resource a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Resource {
    /// Storage in bytes, tables included.
    Bytes,
    /// Bit-operations.
    Bops,
}

/// A budget for [`Problem::solve`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Budget {
    /// At most this many bytes.
    Bytes(u64),
    /// At most this many bit-operations.
    Bops(u64),
    /// At least this compression ratio against f32 storage (`4 · params` bytes): the byte
    /// budget `floor(4 · params / ratio)`.
    CompressionRatio(f64),
}

/// One layer of an [`Allocation`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LayerAllocation {
    /// The layer's name.
    pub name: String,
    /// Its parameter count.
    pub params: u64,
    /// The chosen width.
    pub bits: u8,
    /// The chosen group size, if group-wise.
    pub group_size: Option<usize>,
    /// Storage in bytes.
    pub bytes: u64,
    /// Bit-operations.
    pub bops: u64,
    /// The option's sensitivity.
    pub sensitivity: f64,
    /// Whether the layer's curvature was negative (not at a local minimum).
    pub negative_curvature: bool,
    /// Index of the chosen option in the layer's `options`.
    pub option: usize,
}

/// A width (and grouping) for every layer, with totals.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Allocation {
    /// Per layer, in the problem's order.
    pub layers: Vec<LayerAllocation>,
    /// Total storage in bytes.
    pub bytes: u64,
    /// Total bit-operations.
    pub bops: u64,
    /// Total sensitivity (the objective).
    pub sensitivity: f64,
    /// f32 storage of the same layers (`4 · params`).
    pub original_bytes: u64,
    /// `original_bytes / bytes`.
    pub compression_ratio: f64,
}

/// A set of layers with their candidates, width constraints and ties.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    layers: Vec<LayerSpec>,
    ties: Vec<Vec<usize>>,
}

/// One alternative of an item of the knapsack: a cost, a sensitivity and the options it
/// picks for the layers of the item.
#[derive(Debug, Clone)]
struct Alternative {
    bytes: u64,
    bops: u64,
    sensitivity: f64,
    picks: Vec<usize>,
}

/// A knapsack item: one layer, or a tie group whose alternatives fix a common width.
#[derive(Debug, Clone)]
struct Item {
    layers: Vec<usize>,
    alternatives: Vec<Alternative>,
}

/// One step of the DP: the Pareto frontier of `cur ⊕ alts` (every point of `cur` plus
/// every alternative), written into `out`. `cur` is sorted by cost ascending with
/// sensitivity strictly descending, so each shifted copy is sorted too and a linear
/// `m`-way merge (ties: lower sensitivity, then earlier alternative) replaces a sort.
fn merge_step(cur: &[(u64, f64)], alts: &[(u64, f64)], cap: u64, out: &mut Vec<(u64, f64)>) -> Result<()> {
    out.clear();
    let mut heads = vec![0usize; alts.len()];
    let mut best = f64::INFINITY;
    loop {
        let mut pick: Option<(usize, u64, f64)> = None;
        for (j, (&h, &(c, s))) in heads.iter().zip(alts).enumerate() {
            if let Some(&(pc, ps)) = cur.get(h) {
                let cost = pc.checked_add(c).ok_or(MixedError::Overflow)?;
                let sens = ps + s;
                if pick.is_none_or(|(_, bc, bs)| cost < bc || (cost == bc && sens < bs)) {
                    pick = Some((j, cost, sens));
                }
            }
        }
        let Some((j, cost, sens)) = pick else { break };
        if cost > cap {
            break;
        }
        heads[j] += 1;
        if sens < best {
            best = sens;
            out.push((cost, sens));
        }
    }
    Ok(())
}

/// The Pareto frontier of the sums over `items` (costs at most `cap`), cost ascending.
fn frontier_of(items: &[Vec<(u64, f64)>], cap: u64) -> Result<Vec<(u64, f64)>> {
    let mut cur = vec![(0u64, 0.0f64)];
    let mut next = Vec::new();
    for alts in items {
        merge_step(&cur, alts, cap, &mut next)?;
        core::mem::swap(&mut cur, &mut next);
        if cur.is_empty() {
            break;
        }
    }
    Ok(cur)
}

/// The least-sensitivity choice of one alternative per item with total cost `≤ cap` (ties
/// to the lower cost), by divide and conquer (Hirschberg): the frontiers of the two halves
/// meet at the best pair within the budget, then each half is solved for its share. Memory
/// stays linear in the frontier size; time is about that of one frontier pass.
fn choose(items: &[Vec<(u64, f64)>], cap: u64, out: &mut [usize]) -> Result<bool> {
    match items.len() {
        0 => Ok(true),
        1 => {
            let best = items[0]
                .iter()
                .enumerate()
                .filter(|(_, a)| a.0 <= cap)
                .min_by(|(i, a), (j, b)| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)).then(i.cmp(j)));
            match best {
                Some((i, _)) => {
                    out[0] = i;
                    Ok(true)
                }
                None => Ok(false),
            }
        }
        n => {
            let mid = n / 2;
            let left = frontier_of(&items[..mid], cap)?;
            let right = frontier_of(&items[mid..], cap)?;
            // Two pointers: as the left cost rises, the best right point (the last one that
            // fits) moves left.
            let mut best: Option<(f64, u64, u64, u64)> = None;
            let mut j = right.len();
            for &(lc, ls) in &left {
                while j > 0 && right[j - 1].0 > cap - lc {
                    j -= 1;
                }
                if j == 0 {
                    break;
                }
                let (rc, rs) = right[j - 1];
                let (s, c) = (ls + rs, lc + rc);
                if best.is_none_or(|(bs, bc, _, _)| s < bs || (s == bs && c < bc)) {
                    best = Some((s, c, lc, rc));
                }
            }
            let Some((_, _, lc, rc)) = best else { return Ok(false) };
            let (lo, hi) = out.split_at_mut(mid);
            Ok(choose(&items[..mid], lc, lo)? && choose(&items[mid..], rc, hi)?)
        }
    }
}

impl Problem {
    /// A problem over `layers`.
    ///
    /// # Errors
    /// [`MixedError::Empty`] for no layers, [`MixedError::NoOptions`] for a layer whose
    /// constraints leave no option, [`MixedError::NonFinite`] for a sensitivity that is not
    /// finite, [`MixedError::InvalidValue`] for a negative one.
    pub fn new(layers: Vec<LayerSpec>) -> Result<Self> {
        if layers.is_empty() {
            return Err(MixedError::Empty { what: "layers" });
        }
        for (i, l) in layers.iter().enumerate() {
            if !l.options.iter().any(|o| l.allows(o.bits)) {
                return Err(MixedError::NoOptions { layer: i, name: l.name.clone() });
            }
            for (j, o) in l.options.iter().enumerate() {
                if !o.sensitivity.is_finite() {
                    return Err(MixedError::NonFinite { what: "sensitivity", index: j });
                }
                if o.sensitivity < 0.0 {
                    return Err(MixedError::InvalidValue { what: "sensitivity", value: o.sensitivity });
                }
            }
        }
        Ok(Self { layers, ties: Vec::new() })
    }

    /// Requires the given layers to share one width (HAWQ-V3's residual pairs); each may use
    /// its own grouping at that width.
    ///
    /// # Errors
    /// [`MixedError::InvalidTie`] for an index out of range or a layer already tied (merge
    /// the groups instead), [`MixedError::NoOptions`] when the layers have no width in common.
    pub fn tie(mut self, layers: &[usize]) -> Result<Self> {
        let n = self.layers.len();
        let mut seen: Vec<usize> = self.ties.concat();
        for &l in layers {
            if l >= n || seen.contains(&l) {
                return Err(MixedError::InvalidTie { layer: l, layers: n });
            }
            seen.push(l);
        }
        if layers.len() > 1 {
            if self.common_widths(layers).is_empty() {
                return Err(MixedError::NoOptions { layer: layers[0], name: self.layers[layers[0]].name.clone() });
            }
            self.ties.push(layers.to_vec());
        }
        Ok(self)
    }

    /// The layers.
    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// f32 storage of all layers.
    pub fn original_bytes(&self) -> u64 {
        self.layers.iter().map(|l| 4 * l.params).sum()
    }

    fn common_widths(&self, layers: &[usize]) -> Vec<u8> {
        let mut widths: Vec<u8> =
            self.layers[layers[0]].options.iter().map(|o| o.bits).filter(|&b| self.layers[layers[0]].allows(b)).collect();
        widths.sort_unstable();
        widths.dedup();
        widths.retain(|&b| layers.iter().all(|&l| self.layers[l].options.iter().any(|o| o.bits == b && self.layers[l].allows(b))));
        widths
    }

    fn option_cost(o: &LayerOption, r: Resource) -> u64 {
        match r {
            Resource::Bytes => o.bytes,
            Resource::Bops => o.bops,
        }
    }

    /// The knapsack items for `resource`: untied layers as they are, tie groups with one
    /// alternative per point of the per-width sub-frontier (exact).
    fn items(&self, resource: Resource) -> Result<Vec<Item>> {
        let tied: Vec<usize> = self.ties.concat();
        let mut items = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            if let Some(group) = self.ties.iter().find(|g| g[0] == i) {
                let mut alternatives = Vec::new();
                for b in self.common_widths(group) {
                    let opts: Vec<Vec<usize>> = group
                        .iter()
                        .map(|&m| (0..self.layers[m].options.len()).filter(|&j| self.layers[m].options[j].bits == b).collect())
                        .collect();
                    let costs: Vec<Vec<(u64, f64)>> = group
                        .iter()
                        .zip(&opts)
                        .map(|(&m, js)| {
                            js.iter()
                                .map(|&j| (Self::option_cost(&self.layers[m].options[j], resource), self.layers[m].options[j].sensitivity))
                                .collect()
                        })
                        .collect();
                    for (cost, _) in frontier_of(&costs, u64::MAX)? {
                        let mut alts = vec![0usize; group.len()];
                        if choose(&costs, cost, &mut alts)? {
                            let picks: Vec<usize> = alts.iter().zip(&opts).map(|(&a, js)| js[a]).collect();
                            alternatives.push(self.alternative(group, &picks)?);
                        }
                    }
                }
                items.push(Item { layers: group.clone(), alternatives });
            } else if !tied.contains(&i) {
                let picks: Vec<Vec<usize>> = (0..l.options.len()).filter(|&j| l.allows(l.options[j].bits)).map(|j| vec![j]).collect();
                let alternatives = picks.iter().map(|p| self.alternative(&[i], p)).collect::<Result<Vec<_>>>()?;
                items.push(Item { layers: vec![i], alternatives });
            }
        }
        Ok(items)
    }

    fn alternative(&self, layers: &[usize], picks: &[usize]) -> Result<Alternative> {
        let (mut bytes, mut bops, mut sensitivity) = (0u64, 0u64, 0.0);
        for (&l, &j) in layers.iter().zip(picks) {
            let o = &self.layers[l].options[j];
            bytes = bytes.checked_add(o.bytes).ok_or(MixedError::Overflow)?;
            bops = bops.checked_add(o.bops).ok_or(MixedError::Overflow)?;
            sensitivity += o.sensitivity;
        }
        Ok(Alternative { bytes, bops, sensitivity, picks: picks.to_vec() })
    }

    fn item_costs(items: &[Item], resource: Resource) -> Vec<Vec<(u64, f64)>> {
        items
            .iter()
            .map(|it| {
                it.alternatives
                    .iter()
                    .map(|a| {
                        let c = match resource {
                            Resource::Bytes => a.bytes,
                            Resource::Bops => a.bops,
                        };
                        (c, a.sensitivity)
                    })
                    .collect()
            })
            .collect()
    }

    /// The Pareto frontier of (total `resource`, total sensitivity) over all assignments
    /// that satisfy the constraints and ties: every point is the least sensitivity reachable
    /// within its cost, costs strictly increase and sensitivities strictly decrease along it.
    /// A dynamic programme keeps only the non-dominated partial sums (never enumerating
    /// assignments): `O(items · options · F)` time and `O(F)` memory for a frontier of `F`
    /// points.
    ///
    /// # Errors
    /// [`MixedError::Overflow`] when a total does not fit in `u64`.
    pub fn frontier(&self, resource: Resource) -> Result<Frontier<'_>> {
        let items = self.items(resource)?;
        let costs = Self::item_costs(&items, resource);
        let points = frontier_of(&costs, u64::MAX)?;
        Ok(Frontier { problem: self, items, costs, points, resource })
    }

    /// The exact optimum: the assignment of least total sensitivity within the budget (ties
    /// between equal optima go to the smaller cost). Time about one frontier pass, memory
    /// linear in the frontier (divide and conquer over the layers).
    ///
    /// # Errors
    /// [`MixedError::Infeasible`] (with the least achievable total) when nothing fits,
    /// [`MixedError::InvalidValue`] for a compression ratio below 1 or not finite,
    /// [`MixedError::Overflow`].
    pub fn solve(&self, budget: Budget) -> Result<Allocation> {
        let (resource, cap) = match budget {
            Budget::Bytes(b) => (Resource::Bytes, b),
            Budget::Bops(b) => (Resource::Bops, b),
            Budget::CompressionRatio(r) => {
                if !(r.is_finite() && r >= 1.0) {
                    return Err(MixedError::InvalidValue { what: "compression ratio", value: r });
                }
                (Resource::Bytes, (self.original_bytes() as f64 / r).floor() as u64)
            }
        };
        let items = self.items(resource)?;
        let costs = Self::item_costs(&items, resource);
        let minimum = costs.iter().map(|c| c.iter().map(|x| x.0).min().unwrap_or(0)).fold(0u64, u64::saturating_add);
        if minimum > cap {
            return Err(MixedError::Infeasible { budget: cap, minimum });
        }
        let mut alts = vec![0usize; items.len()];
        if !choose(&costs, cap, &mut alts)? {
            return Err(MixedError::Infeasible { budget: cap, minimum });
        }
        Ok(self.assemble(&items, &alts))
    }

    /// The allocation that picks alternative `alts[i]` of item `i`.
    fn assemble(&self, items: &[Item], alts: &[usize]) -> Allocation {
        let mut chosen = vec![0usize; self.layers.len()];
        for (item, &a) in items.iter().zip(alts) {
            for (&l, &j) in item.layers.iter().zip(&item.alternatives[a].picks) {
                chosen[l] = j;
            }
        }
        let layers: Vec<LayerAllocation> = self
            .layers
            .iter()
            .zip(&chosen)
            .map(|(l, &j)| {
                let o = &l.options[j];
                LayerAllocation {
                    name: l.name.clone(),
                    params: l.params,
                    bits: o.bits,
                    group_size: o.group_size,
                    bytes: o.bytes,
                    bops: o.bops,
                    sensitivity: o.sensitivity,
                    negative_curvature: l.negative_curvature,
                    option: j,
                }
            })
            .collect();
        let bytes = layers.iter().map(|l| l.bytes).fold(0u64, u64::saturating_add);
        let bops = layers.iter().map(|l| l.bops).fold(0u64, u64::saturating_add);
        // Summed in item order, as the DP sums.
        let sensitivity = items.iter().zip(alts).fold(0.0, |s, (it, &a)| s + it.alternatives[a].sensitivity);
        let original_bytes = self.original_bytes();
        Allocation { layers, bytes, bops, sensitivity, original_bytes, compression_ratio: original_bytes as f64 / bytes.max(1) as f64 }
    }
}

/// The Pareto frontier of a [`Problem`]; every point turns into an [`Allocation`].
#[derive(Debug, Clone)]
pub struct Frontier<'a> {
    problem: &'a Problem,
    items: Vec<Item>,
    costs: Vec<Vec<(u64, f64)>>,
    points: Vec<(u64, f64)>,
    resource: Resource,
}

impl Frontier<'_> {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }
    /// Whether there are no points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
    /// The resource on the cost axis.
    pub fn resource(&self) -> Resource {
        self.resource
    }
    /// The points `(total cost, total sensitivity)`, cost ascending.
    pub fn points(&self) -> &[(u64, f64)] {
        &self.points
    }
    /// The index of the best point within `budget` (the last point of cost `≤ budget`).
    pub fn best_within(&self, budget: u64) -> Option<usize> {
        self.points.partition_point(|p| p.0 <= budget).checked_sub(1)
    }
    /// The allocation at point `index` (indices past the end give the last point), found by
    /// solving for the point's cost (one divide-and-conquer pass; points are not stored with
    /// back-pointers, which would take memory proportional to layers × frontier). Its cost
    /// equals the point's and its sensitivity the point's up to the rounding of the sums, with
    /// one exception: when sensitivities differ so much in magnitude that adding one to another
    /// rounds it away, the two passes associate the sums differently and may return an
    /// equally good assignment of lower cost.
    ///
    /// # Errors
    /// [`MixedError::Empty`] for an empty frontier, [`MixedError::Overflow`].
    pub fn allocation(&self, index: usize) -> Result<Allocation> {
        let last = self.points.len().checked_sub(1).ok_or(MixedError::Empty { what: "frontier" })?;
        let cap = self.points[index.min(last)].0;
        let mut alts = vec![0usize; self.items.len()];
        if !choose(&self.costs, cap, &mut alts)? {
            return Err(MixedError::Empty { what: "frontier" });
        }
        Ok(self.problem.assemble(&self.items, &alts))
    }
}
