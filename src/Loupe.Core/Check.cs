namespace Loupe;

/// <summary>Range checks for values read from files and arguments, each failing with an <see cref="InputError"/>.</summary>
public static class Check
{
    /// <summary>An integer in [min, max]; <paramref name="where"/> names the file or "argument", <paramref name="what"/> the field or option.</summary>
    public static int InRange(long value, long min, long max, string where, string what)
    {
        if (value < min || value > max)
            throw InputError.Expected(where, what, max == long.MaxValue || max == int.MaxValue ? $"an integer ≥ {min}" : $"an integer in [{min}, {max}]", value);
        return (int)Math.Clamp(value, int.MinValue, int.MaxValue);
    }

    /// <summary>A finite number in [min, max] (NaN and ±∞ refused).</summary>
    public static double Finite(double value, double min, double max, string where, string what)
    {
        if (!double.IsFinite(value) || value < min || value > max)
        {
            string range = (double.IsNegativeInfinity(min), double.IsPositiveInfinity(max)) switch
            {
                (true, true) => "a finite number",
                (false, true) => $"a finite number ≥ {InputError.Show(min)}",
                (true, false) => $"a finite number ≤ {InputError.Show(max)}",
                _ => $"a finite number in [{InputError.Show(min)}, {InputError.Show(max)}]",
            };
            throw InputError.Expected(where, what, range, value);
        }
        return value;
    }

    /// <summary>A finite number strictly greater than <paramref name="exclusiveMin"/>.</summary>
    public static double Above(double value, double exclusiveMin, string where, string what)
    {
        if (!double.IsFinite(value) || value <= exclusiveMin)
            throw InputError.Expected(where, what, $"a finite number > {InputError.Show(exclusiveMin)}", value);
        return value;
    }

    /// <summary>a·b·… as a long, refusing products past <paramref name="limit"/> (default: what one .NET array can index).</summary>
    public static long Product(string where, string what, long limit, params long[] factors)
    {
        long p = 1;
        foreach (long f in factors)
        {
            if (f < 0) throw InputError.Expected(where, what, "non-negative sizes", string.Join(" × ", factors));
            if (f != 0 && p > limit / f)
                throw InputError.Expected(where, what, $"a size of at most {limit:N0} elements", string.Join(" × ", factors));
            p *= f;
        }
        if (p > limit) throw InputError.Expected(where, what, $"a size of at most {limit:N0} elements", string.Join(" × ", factors));
        return p;
    }

    /// <summary>The most elements one float[] (or Span) can hold.</summary>
    public const long MaxArrayElements = 0x7FFFFFC7;
}
