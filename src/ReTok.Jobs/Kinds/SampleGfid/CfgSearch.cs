using System.Globalization;
using ReTok.Models.Generation;

namespace ReTok.Jobs.Kinds.SampleGfid;

public enum CfgSearchMode { HillClimb, List }

/// <summary>
/// `cfg_search:` of sample-gfid. hill_climb = sample_c2i_cfg_search.py --search (search_cfg_only /
/// get_next_search_state_cfg): start at `start` (default: the reference's empirical_cfg_start table), then repeatedly
/// take the scale with the lowest gFID so far and evaluate the first untried of [best+step, best-step] (>= min_scale);
/// stop when both neighbours are tried (a local minimum on the step grid) or after max_rounds. list = evaluate `scales`
/// in order. Every scale is one round: its shards + an aggregator (a child run of the previous round).
/// </summary>
public sealed record CfgSearchParams
{
    public CfgSearchMode Mode { get; init; } = CfgSearchMode.HillClimb;
    /// <summary>list mode: the scales, evaluated in this order.</summary>
    public List<double>? Scales { get; init; }
    /// <summary>hill_climb: first scale; null = the reference table (step: GPT-B 2.5, GPT-L 1.75, others 1.25; constant: B 2.0, L 1.75, others 1.75).</summary>
    public double? Start { get; init; }
    public double Step { get; init; } = 0.25;
    public double MinScale { get; init; } = 1.0;
    /// <summary>Upper bound on the number of evaluated scales (the reference has none).</summary>
    public int MaxRounds { get; init; } = 20;

    public IEnumerable<string> Validate(string schedule)
    {
        if (MaxRounds < 1) yield return $"cfg_search.max_rounds: must be >= 1, got {MaxRounds}";
        if (Mode == CfgSearchMode.List)
        {
            if (Scales is null || Scales.Count == 0) yield return "cfg_search.scales: list mode needs at least one scale";
            else if (Scales.Any(s => !(s > 0))) yield return $"cfg_search.scales: every scale must be > 0, got [{string.Join(", ", Scales)}]";
        }
        else
        {
            if (Scales is not null) yield return "cfg_search.scales: only for mode: list";
            if (!(Step > 0)) yield return $"cfg_search.step: must be > 0, got {Step}";
            if (Start is { } s && !(s > 0)) yield return $"cfg_search.start: must be > 0, got {s}";
            if (schedule is not ("step" or "constant" or "rectangular"))
                yield return $"cfg_search: hill_climb supports cfg_schedule step, constant or rectangular (window grid), got '{schedule}'";
        }
    }
}

/// <summary>One evaluated scale (and, for the rectangular grid, window): its gFID and the aggregator run that computed it.</summary>
public sealed record CfgPoint
{
    public double CfgScale { get; init; }
    public double? WindowStart { get; init; }
    public double? WindowEnd { get; init; }
    public double Gfid { get; init; }
    public long RunId { get; init; }
}

public static class CfgSearchPlan
{
    static double R(double x) => Math.Round(x, 6);
    static bool Tried(IEnumerable<CfgPoint> h, double s) => h.Any(p => Math.Abs(p.CfgScale - s) < 1e-9);

    /// <summary>The reference's empirical_cfg_start for a GPT config (preset found by size; adaLN/"v4b" variants not ported).</summary>
    public static double EmpiricalStart(string schedule, GptConfig cfg)
    {
        var preset = GptConfig.Presets.FirstOrDefault(kv => kv.Value == (cfg.NLayer, cfg.NHead, cfg.Dim)).Key;
        return (schedule, preset) switch
        {
            ("step", "GPT-B") => 2.5, ("step", "GPT-L") => 1.75, ("step", _) => 1.25,
            ("constant", "GPT-B") => 2.0, ("constant", _) => 1.75,
            ("rectangular", "GPT-B") => 3.0, ("rectangular", "GPT-L") => 2.5, ("rectangular", _) => 1.75,
            _ => throw new ArgumentException($"cfg_search: no starting scale for cfg_schedule '{schedule}'"),
        };
    }

    /// <summary>
    /// The reference's rectangular window grid (search(), cfg_schedule == 'rectangular'): window_start in
    /// np.arange(0.1, 0.81, 0.05), window_end in np.arange(0.5, 1.01, 0.05), pairs with start &lt; end, start-major.
    /// np.arange fills start + i * ((start + step) - start), so the values carry its float64 error, and (0.8, 0.8) is a
    /// pair (0.8000000000000002 &lt; 0.8000000000000003): 138 pairs, each sampled with exactly these floats.
    /// </summary>
    public static readonly IReadOnlyList<(double Start, double End)> RectangularWindows = BuildWindows();

    static List<(double, double)> BuildWindows()
    {
        static List<double> Arange(double start, double stop, double step)
        {
            double delta = (start + step) - start;
            var r = new List<double>();
            for (int i = 0, n = (int)Math.Ceiling((stop - start) / step); i < n; i++) r.Add(start + i * delta);
            return r;
        }
        return [.. from a in Arange(0.1, 0.8 + 0.01, 0.05) from b in Arange(0.5, 1.01, 0.05) where a < b select (a, b)];
    }

    /// <summary>A round of the search: the scale to evaluate and, on the rectangular grid, the window.</summary>
    public sealed record CfgStep(double CfgScale, double? WindowStart = null, double? WindowEnd = null);

    /// <summary>
    /// The next evaluation of the search, or null when it is over; <paramref name="start"/> is the first scale. One
    /// planner for both grids: hill_climb is search_cfg_only over a list of windows: the one window "none" for the step
    /// and constant schedules (try best + step, then best - step), or <see cref="RectangularWindows"/> in order when
    /// <paramref name="windows"/> (the rectangular search: increase_first=False, so best - step first, over that
    /// window's points only, as the reference filters its CSV by the window annotation). A window starts from the
    /// previous window's best scale (the reference carries args.cfg_scale_start = best_cfg_scale forward; the first from
    /// <paramref name="start"/>), and the next window begins when the current one is at a local minimum on the step
    /// grid (both neighbours of its best tried, or below min_scale). list: the scales in order (no windows).
    /// </summary>
    public static CfgStep? Next(CfgSearchParams s, IReadOnlyList<CfgPoint> history, double start, bool windows = false)
    {
        if (history.Count >= s.MaxRounds) return null;
        if (s.Mode == CfgSearchMode.List)
            return s.Scales!.Where(x => !Tried(history, x)).Select(x => new CfgStep(x)).FirstOrDefault();
        IReadOnlyList<(double? Start, double? End)> grid = windows ? [.. RectangularWindows.Select(w => ((double?)w.Start, (double?)w.End))] : [(null, null)];
        int w = 0;
        if (history.Count > 0)
        {
            var last = history[^1];
            while (w < grid.Count && grid[w] != (last.WindowStart, last.WindowEnd)) w++;
            if (w == grid.Count) throw new InvalidOperationException($"cfg_search: window ({last.WindowStart}, {last.WindowEnd}) is not on the {(windows ? "rectangular grid" : "search's grid (no window)")}");
        }
        for (; w < grid.Count; w++)
        {
            var (ws, we) = grid[w];
            var mine = history.Where(h => h.WindowStart == ws && h.WindowEnd == we).ToList();
            if (mine.Count == 0)
            {
                var prev = w == 0 ? null : history.Where(h => h.WindowStart == grid[w - 1].Start && h.WindowEnd == grid[w - 1].End).ToList();
                return new CfgStep(prev is { Count: > 0 } ? Best(prev).CfgScale : R(start), ws, we);
            }
            var best = Best(mine);
            var neighbours = windows ? new[] { R(best.CfgScale - s.Step), R(best.CfgScale + s.Step) } : new[] { R(best.CfgScale + s.Step), R(best.CfgScale - s.Step) };
            foreach (var c in neighbours)
                if (c >= s.MinScale - 1e-9 && !Tried(mine, c)) return new CfgStep(c, ws, we);
        }
        return null;
    }

    /// <summary>Lowest gFID; ties go to the earlier evaluation (pandas idxmin over the CSV rows).</summary>
    public static CfgPoint Best(IReadOnlyList<CfgPoint> history)
    {
        var best = history[0];
        foreach (var p in history) if (p.Gfid < best.Gfid) best = p;
        return best;
    }

    public static string Key(int tokens, double scale) => $"gfid@k={tokens},cfg={scale.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>The metric key of a point: with a window (rectangular search) the reference's annotation, window_start=0.10;window_end=0.50.</summary>
    public static string Key(int tokens, CfgPoint p) => p.WindowStart is { } ws && p.WindowEnd is { } we
        ? $"{Key(tokens, p.CfgScale)},window={ws.ToString("F2", CultureInfo.InvariantCulture)}-{we.ToString("F2", CultureInfo.InvariantCulture)}"
        : Key(tokens, p.CfgScale);
}
