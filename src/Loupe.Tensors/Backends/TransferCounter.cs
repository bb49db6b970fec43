namespace Loupe.Tensors.Backends;

/// <summary>Why bytes crossed between host and device.</summary>
public enum TransferKind
{
    /// <summary>Activations, gradients, hook edits: what a test expects to be only what was asked for.</summary>
    Data,
    /// <summary>Token ids, positions and padding masks going in with a batch.</summary>
    Inputs,
    /// <summary>Weights and constant tables, once at load or first use.</summary>
    Weights,
    /// <summary>Single numbers read back (a sum, a finite check, an argmax).</summary>
    Scalars,
}

/// <summary>Counts host↔device copies of a backend, by kind and direction. Thread-safe.</summary>
public sealed class TransferCounter
{
    readonly long[] _toDevice = new long[4], _toHost = new long[4], _bytesToDevice = new long[4], _bytesToHost = new long[4];

    public void CountToDevice(TransferKind kind, long bytes)
    {
        Interlocked.Increment(ref _toDevice[(int)kind]);
        Interlocked.Add(ref _bytesToDevice[(int)kind], bytes);
    }

    public void CountToHost(TransferKind kind, long bytes)
    {
        Interlocked.Increment(ref _toHost[(int)kind]);
        Interlocked.Add(ref _bytesToHost[(int)kind], bytes);
    }

    public long ToDevice(TransferKind kind) => Interlocked.Read(ref _toDevice[(int)kind]);
    public long ToHost(TransferKind kind) => Interlocked.Read(ref _toHost[(int)kind]);
    public long BytesToDevice(TransferKind kind) => Interlocked.Read(ref _bytesToDevice[(int)kind]);
    public long BytesToHost(TransferKind kind) => Interlocked.Read(ref _bytesToHost[(int)kind]);

    /// <summary>A copy of the counts now, to compare with later.</summary>
    public TransferSnapshot Snapshot() => new(
        Enum.GetValues<TransferKind>().Select(ToDevice).ToArray(), Enum.GetValues<TransferKind>().Select(ToHost).ToArray());
}

/// <summary>Transfer counts at one moment; subtract two to get what happened between them.</summary>
public sealed record TransferSnapshot(long[] ToDevice, long[] ToHost)
{
    public static TransferSnapshot operator -(TransferSnapshot after, TransferSnapshot before) => new(
        after.ToDevice.Zip(before.ToDevice, (a, b) => a - b).ToArray(), after.ToHost.Zip(before.ToHost, (a, b) => a - b).ToArray());

    public long In(TransferKind kind) => ToDevice[(int)kind];
    public long Out(TransferKind kind) => ToHost[(int)kind];

    public override string ToString() => string.Join(", ", Enum.GetValues<TransferKind>().Select(k => $"{k}: {In(k)} in / {Out(k)} out"));
}
