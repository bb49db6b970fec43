// Selection of the k largest values without sorting a whole row.
//
// Per row (TopK, AuxK): a min-heap of the k best (value, index) pairs; each further element is
// compared with the heap's minimum and almost always rejected, so a row costs about one pass.
// Over a whole batch (BatchTopK): quickselect on a copy finds the threshold value, then one pass
// keeps the values above it and the earliest ties at it. Ties are broken by the lower index, so
// results never depend on thread scheduling.
namespace Loupe.Dictionaries.Sae;

/// <summary>Finds the k largest entries of a span (ties: lower index first).</summary>
public static class TopKSelection
{
    /// <summary>
    /// Writes the indices of the <c>min(k, values.Length)</c> largest entries of <paramref name="values"/> into
    /// <paramref name="indices"/> (in no particular order) and returns how many were written. NaN never wins.
    /// </summary>
    public static int Largest(ReadOnlySpan<float> values, int k, Span<int> indices)
    {
        int n = values.Length;
        k = Math.Min(k, n);
        if (k <= 0) return 0;
        if (indices.Length < k) throw new ArgumentException($"indices holds {indices.Length}; need k = {k}", nameof(indices));
        var heap = indices[..k]; // min-heap on (value, −index): the root is the worst kept entry
        for (int i = 0; i < k; i++) { heap[i] = i; SiftUp(values, heap, i); }
        for (int i = k; i < n; i++)
        {
            float v = values[i], root = values[heap[0]];
            if (!(v > root) && !(float.IsNaN(root) && !float.IsNaN(v))) continue; // ties keep the earlier index; NaN loses
            heap[0] = i;
            SiftDown(values, heap, 0, k);
        }
        return k;
    }

    // a is worse than b: smaller value, or equal value and later index (NaN is worst of all)
    static bool Worse(ReadOnlySpan<float> v, int a, int b)
    {
        float va = v[a], vb = v[b];
        if (float.IsNaN(va)) return !float.IsNaN(vb) || a > b;
        if (float.IsNaN(vb)) return false;
        return va < vb || (va == vb && a > b);
    }

    static void SiftUp(ReadOnlySpan<float> v, Span<int> heap, int i)
    {
        while (i > 0)
        {
            int parent = (i - 1) >> 1;
            if (!Worse(v, heap[i], heap[parent])) break;
            (heap[i], heap[parent]) = (heap[parent], heap[i]);
            i = parent;
        }
    }

    static void SiftDown(ReadOnlySpan<float> v, Span<int> heap, int i, int n)
    {
        while (true)
        {
            int l = 2 * i + 1, r = l + 1, worst = i;
            if (l < n && Worse(v, heap[l], heap[worst])) worst = l;
            if (r < n && Worse(v, heap[r], heap[worst])) worst = r;
            if (worst == i) return;
            (heap[i], heap[worst]) = (heap[worst], heap[i]);
            i = worst;
        }
    }

    /// <summary>
    /// The k-th largest value of <paramref name="values"/> (k ≥ 1), by quickselect on <paramref name="scratch"/>
    /// (overwritten; length ≥ values.Length). NaN values are treated as −∞.
    /// </summary>
    public static float KthLargest(ReadOnlySpan<float> values, int k, Span<float> scratch)
    {
        int n = values.Length;
        if (k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(k), k, $"need 1 ≤ k ≤ {n}");
        var a = scratch[..n];
        for (int i = 0; i < n; i++) a[i] = float.IsNaN(values[i]) ? float.NegativeInfinity : values[i];
        // find the element that would sit at index k−1 in descending order
        int lo = 0, hi = n - 1, target = k - 1;
        while (lo < hi)
        {
            int mid = lo + (hi - lo) / 2;
            float pivot = Median3(a[lo], a[mid], a[hi]);
            int i = lo, j = hi;
            while (i <= j)
            {
                while (a[i] > pivot) i++;
                while (a[j] < pivot) j--;
                if (i <= j) { (a[i], a[j]) = (a[j], a[i]); i++; j--; }
            }
            if (target <= j) hi = j;
            else if (target >= i) lo = i;
            else return a[target];
        }
        return a[target];
    }

    static float Median3(float a, float b, float c) =>
        a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
}
