// Streaming per-feature state for feature dashboards. Memory is fixed by the dictionary and the
// options, never by the corpus: nothing here grows with the number of tokens.
//
// Shape legend: d_sae = dictionary features, K = top examples per feature, Q = quantile intervals,
// S = samples per interval, W = 2·window + 1 window positions, B = histogram bins.
//   top slots        [d_sae, K]        activation, context, position   + window [d_sae, K, W]
//   reservoir slots  [d_sae·Q, S]      activation, context, position   + window [d_sae·Q, S, W]
//   histogram        [d_sae, B]        counts of active tokens per bin of (0, max]
namespace Loupe.Dictionaries.Features;

/// <summary>
/// Fixed-capacity storage for example tokens, in groups (one group per feature, or per feature and
/// interval): each slot holds an activation, its context and position, and the feature's activations
/// over a window of <c>W</c> positions centred on it (out-of-context positions are 0).
/// </summary>
sealed class ExampleSlots
{
    public ExampleSlots(int groups, int capacity, int windowWidth)
    {
        // Sizes come from --top / --quantile-samples and --window: refused as arguments, overflow-safe.
        long slots = (long)groups * capacity;
        Check.Product("argument", "example slots (features × examples kept × window positions; lower --top, --quantile-samples or --window)",
            Array.MaxLength, groups, capacity, Math.Max(1, windowWidth));
        Capacity = capacity;
        WindowWidth = windowWidth;
        Act = new float[slots];
        Context = new int[slots];
        Position = new int[slots];
        Windows = new float[slots * windowWidth];
        Count = new int[groups];
    }

    public int Capacity { get; }
    public int WindowWidth { get; }
    public float[] Act { get; }        // [groups, capacity]
    public int[] Context { get; }      // [groups, capacity]
    public int[] Position { get; }     // [groups, capacity]
    public float[] Windows { get; }    // [groups, capacity, W]
    public int[] Count { get; }        // [groups] slots in use

    public Span<float> Window(int slot) => Windows.AsSpan(slot * WindowWidth, WindowWidth);

    public void Set(int slot, float act, int context, int position)
    {
        Act[slot] = act;
        Context[slot] = context;
        Position[slot] = position;
    }

    /// <summary>The used slots of a group, best first: activation descending, then (context, position) ascending.</summary>
    public int[] Sorted(int group)
    {
        var slots = Enumerable.Range(group * Capacity, Count[group]).ToArray();
        Array.Sort(slots, (x, y) => Better(x, y) ? -1 : Better(y, x) ? 1 : 0);
        return slots;
    }

    /// <summary>Whether slot x ranks above slot y: higher activation, ties to the earlier token.</summary>
    public bool Better(int x, int y) =>
        Act[x] > Act[y] || (Act[x] == Act[y] && (Context[x] < Context[y] || (Context[x] == Context[y] && Position[x] < Position[y])));
}

/// <summary>
/// The K highest activations of every feature, as one bounded min-heap per feature (the worst kept
/// example at the root). Ties rank the earlier token first; tokens arrive in (context, position)
/// order, so a newcomer equal to the root is never admitted once the heap is full.
/// </summary>
sealed class TopKTracker
{
    readonly int[] _heap; // [d_sae, K] slot indices, heap-ordered within each feature (worst at the root)

    public TopKTracker(int dSae, int k, int windowWidth)
    {
        Slots = new ExampleSlots(dSae, k, windowWidth);
        _heap = new int[dSae * k];
        Threshold = new float[dSae];
        Array.Fill(Threshold, float.NegativeInfinity);
    }

    public ExampleSlots Slots { get; }

    /// <summary>The heaps, for checkpoints: <c>[d_sae, K]</c> slot indices, the first Count[f] of feature f in use.</summary>
    internal int[] Heap => _heap;

    /// <summary>Per feature: the activation a newcomer must exceed (−∞ until the heap is full).</summary>
    public float[] Threshold { get; }

    /// <summary>
    /// Admits (a, context, position) for feature <paramref name="f"/> if it beats the worst kept example;
    /// returns the slot whose window the caller must fill, or −1. Call only when a &gt; Threshold[f].
    /// </summary>
    public int Admit(int f, float a, int context, int position)
    {
        int k = Slots.Capacity, baseIdx = f * k, n = Slots.Count[f];
        int slot;
        if (n < k)
        {
            // Grow: new slot at the end of the heap, sift up.
            slot = baseIdx + n;
            Slots.Set(slot, a, context, position);
            Slots.Count[f] = ++n;
            int i = n - 1;
            _heap[baseIdx + i] = slot;
            while (i > 0)
            {
                int parent = (i - 1) / 2;
                if (!Worse(_heap[baseIdx + i], _heap[baseIdx + parent])) break;
                (_heap[baseIdx + i], _heap[baseIdx + parent]) = (_heap[baseIdx + parent], _heap[baseIdx + i]);
                i = parent;
            }
        }
        else
        {
            // Replace the root (the worst kept example) in place, sift down.
            slot = _heap[baseIdx];
            Slots.Set(slot, a, context, position);
            int i = 0;
            while (true)
            {
                int l = 2 * i + 1, r = l + 1, worst = i;
                if (l < n && Worse(_heap[baseIdx + l], _heap[baseIdx + worst])) worst = l;
                if (r < n && Worse(_heap[baseIdx + r], _heap[baseIdx + worst])) worst = r;
                if (worst == i) break;
                (_heap[baseIdx + i], _heap[baseIdx + worst]) = (_heap[baseIdx + worst], _heap[baseIdx + i]);
                i = worst;
            }
        }
        if (n == k) Threshold[f] = Slots.Act[_heap[baseIdx]];
        return slot;
    }

    bool Worse(int x, int y) => Slots.Better(y, x);
}

/// <summary>
/// A uniform sample of at most S tokens per (feature, interval) — Vitter's Algorithm R: the i-th
/// token of a group is kept with probability S/i, replacing a uniformly chosen slot. The sample is
/// uniform over the group's tokens whatever their order, and deterministic for a given seed. The draw
/// for the i-th token of group g is a hash of (seed, g, i), not a generator's next value: the sampler's
/// whole state is its slots and counts, so a checkpointed build resumes with the same draws.
/// </summary>
sealed class ReservoirSampler
{
    readonly ulong _seed;

    public ReservoirSampler(int groups, int samples, int windowWidth, int seed)
    {
        Slots = new ExampleSlots(groups, samples, windowWidth);
        Seen = new long[groups];
        _seed = Mix((ulong)(uint)seed + 0x9E3779B97F4A7C15UL);
    }

    public ExampleSlots Slots { get; }

    /// <summary>Tokens offered to each group so far (= the interval's active-token count at the end).</summary>
    public long[] Seen { get; }

    /// <summary>Offers one token to <paramref name="group"/>; returns the slot to fill, or −1 when it is not kept.</summary>
    public int Offer(int group, float a, int context, int position)
    {
        long seen = ++Seen[group];
        int s = Slots.Capacity;
        int slot;
        if (seen <= s)
        {
            slot = group * s + (int)(seen - 1);
            Slots.Count[group]++;
        }
        else
        {
            long j = Draw(group, seen);
            if (j >= s) return -1;
            slot = group * s + (int)j;
        }
        Slots.Set(slot, a, context, position);
        return slot;
    }

    /// <summary>A uniform integer in [0, <paramref name="seen"/>) for the seen-th token of <paramref name="group"/> (multiply-shift: bias below seen/2⁶⁴).</summary>
    long Draw(int group, long seen)
    {
        ulong bits = Mix(Mix(_seed + (ulong)(uint)group * 0x9E3779B97F4A7C15UL) + (ulong)seen * 0xD1B54A32D192ED03UL);
        return (long)(((UInt128)bits * (ulong)seen) >> 64);
    }

    /// <summary>SplitMix64's finalizer: a bijection of 64-bit words that scatters every input bit.</summary>
    static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}

/// <summary>Equal-width bins over (0, max]: bin k holds (k·max/B, (k+1)·max/B].</summary>
static class ActivationBins
{
    /// <summary>The bin of an activation 0 &lt; a; values above max (float noise between passes) go to the last bin.</summary>
    public static int Of(float a, float max, int bins)
    {
        int k = (int)Math.Ceiling((double)a / max * bins) - 1;
        return k < 0 ? 0 : k >= bins ? bins - 1 : k;
    }

    /// <summary>The B + 1 edges 0, max/B, …, max.</summary>
    public static double[] Edges(float max, int bins)
    {
        var edges = new double[bins + 1];
        for (int k = 0; k <= bins; k++) edges[k] = (double)max * k / bins;
        edges[bins] = max;
        return edges;
    }
}
