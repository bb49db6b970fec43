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
    /// <param name="work">What to run.</param>
    /// <param name="cancel">Stops the wait (and the work, where it checks).</param>
    /// <param name="longRunning">Run on a thread of its own (a job's sweep or build): minutes of work do not hold one of the
    /// thread pool's few threads (2 on a 2-core machine) that requests and event streams need.</param>
    public async Task<T> RunAsync<T>(Func<HookedTransformer, T> work, CancellationToken cancel = default, bool longRunning = false)
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
        try
        {
            return longRunning
                ? await Task.Factory.StartNew(() => work(model), cancel, TaskCreationOptions.LongRunning, TaskScheduler.Default)
                : await Task.Run(() => work(model), cancel);
        }
        finally { _lock.Release(); }
    }
}

/// <summary>Answered 503: the request queue for the model is full.</summary>
public sealed class ServerBusyException(string message) : Exception(message);
