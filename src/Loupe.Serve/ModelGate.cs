using Loupe.Models;

namespace Loupe.Serve;

/// <summary>The server's one model, used by one forward pass at a time; a bounded number of callers may wait.</summary>
public sealed class ModelGate(HookedTransformer model, int maxQueued)
{
    readonly SemaphoreSlim _lock = new(1, 1);
    int _waiting;

    public HookedTransformer Model => model;

    /// <summary>Runs <paramref name="work"/> with the model to itself, on the thread pool.</summary>
    /// <exception cref="ServerBusyException">More than the allowed number of callers are already waiting.</exception>
    public async Task<T> RunAsync<T>(Func<HookedTransformer, T> work, CancellationToken cancel = default)
    {
        if (Interlocked.Increment(ref _waiting) > maxQueued)
        {
            Interlocked.Decrement(ref _waiting);
            throw new ServerBusyException($"the model is busy ({maxQueued} requests already waiting); try again");
        }
        try
        {
            await _lock.WaitAsync(cancel);
        }
        finally { Interlocked.Decrement(ref _waiting); }
        try { return await Task.Run(() => work(model), cancel); }
        finally { _lock.Release(); }
    }
}

/// <summary>Answered 503: the request queue for the model is full.</summary>
public sealed class ServerBusyException(string message) : Exception(message);
