using System.Diagnostics;
using System.Reflection;
using Loupe.Tensors.Backends;

namespace Loupe.GpuBench;

/// <summary>
/// A backend that forwards every call to another and, while <see cref="On"/>, times each one between two device syncs:
/// where a device step spends its time, per operation. Syncing after every call serialises the stream, so the sum is
/// an upper bound of the step's own time; the ranking is what it is for.
/// </summary>
public class OpTimer : DispatchProxy
{
    IComputeBackend _inner = null!;
    Action _sync = null!;
    readonly Dictionary<string, (int Calls, double Ms)> _totals = [];

    public bool On { get; set; }

    public static (IComputeBackend Backend, OpTimer Timer) Wrap(IComputeBackend inner, Action sync)
    {
        var backend = Create<IComputeBackend, OpTimer>();
        var timer = (OpTimer)(object)backend;
        timer._inner = inner;
        timer._sync = sync;
        return (backend, timer);
    }

    protected override object? Invoke(MethodInfo? method, object?[]? args)
    {
        ArgumentNullException.ThrowIfNull(method);
        bool timed = On && !method.IsSpecialName; // property reads cost nothing worth a sync
        if (timed) _sync();
        var sw = Stopwatch.StartNew();
        object? result;
        try { result = method.Invoke(_inner, args); }
        catch (TargetInvocationException e) when (e.InnerException is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerException).Throw();
            throw;
        }
        if (timed)
        {
            _sync();
            var (calls, ms) = _totals.GetValueOrDefault(method.Name);
            _totals[method.Name] = (calls + 1, ms + sw.Elapsed.TotalMilliseconds);
        }
        return result;
    }

    public IReadOnlyList<(string Op, int Calls, double Ms)> Totals() =>
        _totals.Select(kv => (kv.Key, kv.Value.Calls, kv.Value.Ms)).OrderByDescending(t => t.Ms).ToList();
}
