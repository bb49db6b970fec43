using System.Globalization;

namespace Loupe;

/// <summary>Sizes as people read them, for the estimates printed or refused before large work.</summary>
public static class ByteSizes
{
    /// <summary><c>1.5 GiB</c>, <c>12.0 MiB</c>, <c>3.0 KiB</c>, or <c>N bytes</c> below one KiB (invariant culture).</summary>
    public static string Format(long bytes) => bytes switch
    {
        >= 1L << 30 => (bytes / (double)(1L << 30)).ToString("0.0 GiB", CultureInfo.InvariantCulture),
        >= 1L << 20 => (bytes / (double)(1L << 20)).ToString("0.0 MiB", CultureInfo.InvariantCulture),
        >= 1L << 10 => (bytes / (double)(1L << 10)).ToString("0.0 KiB", CultureInfo.InvariantCulture),
        _ => bytes.ToString(CultureInfo.InvariantCulture) + " bytes",
    };
}
