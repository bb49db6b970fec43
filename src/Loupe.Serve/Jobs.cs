using System.Collections.Concurrent;
using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Loupe.Serve;

/// <summary>One event in a job's life, as streamed to the page.</summary>
/// <param name="Type">progress, result, error, cancelled.</param>
/// <param name="Done">Units finished.</param>
/// <param name="Total">Units in all.</param>
/// <param name="Message">What happened, for a person.</param>
/// <param name="Data">The result (type result only).</param>
public sealed record JobEvent(string Type, int Done, int Total, string? Message, object? Data = null);

/// <summary>A job as the API shows it.</summary>
/// <param name="Id">Its id.</param>
/// <param name="Kind">Its kind.</param>
/// <param name="State">running, done, failed, cancelled.</param>
public sealed record JobView(string Id, string Kind, string State);

/// <summary>Long work: runs on the thread pool, records its events, and can be cancelled.</summary>
public sealed class Job
{
    readonly List<JobEvent> _events = [];
    TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public required string Id { get; init; }
    public required string Kind { get; init; }
    public CancellationTokenSource Cancel { get; } = new();
    public string State { get; private set; } = "running";
    public bool Finished => State != "running";

    public void Report(JobEvent e)
    {
        TaskCompletionSource changed;
        lock (_events)
        {
            _events.Add(e);
            if (e.Type is "result") State = "done";
            else if (e.Type is "error") State = "failed";
            else if (e.Type is "cancelled") State = "cancelled";
            changed = _changed;
            _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        changed.TrySetResult();
    }

    /// <summary>The events from <paramref name="from"/> on, and a task that completes when more arrive.</summary>
    public (JobEvent[] Events, Task Changed) Read(int from)
    {
        lock (_events) return (_events.Skip(from).ToArray(), _changed.Task);
    }
}

/// <summary>The server's jobs: a bounded number run at once; finished ones are kept for their events.</summary>
public sealed class JobManager(int maxRunning)
{
    readonly ConcurrentDictionary<string, Job> _jobs = new();

    public Job? Find(string id) => _jobs.TryGetValue(id, out var job) ? job : null;

    /// <summary>Starts <paramref name="work"/> as a job, or returns null when <c>maxRunning</c> jobs already run.</summary>
    public Job? Start(string kind, Func<Job, CancellationToken, Task<object>> work)
    {
        lock (_jobs)
        {
            if (_jobs.Values.Count(j => !j.Finished) >= maxRunning) return null;
            var job = new Job { Id = Guid.NewGuid().ToString("N")[..16], Kind = kind };
            _jobs[job.Id] = job;
            _ = Task.Run(async () =>
            {
                try
                {
                    var result = await work(job, job.Cancel.Token);
                    job.Report(new JobEvent("result", 1, 1, "done", result));
                }
                catch (OperationCanceledException) when (job.Cancel.IsCancellationRequested)
                {
                    job.Report(new JobEvent("cancelled", 0, 0, "cancelled"));
                }
                catch (Exception e)
                {
                    job.Report(new JobEvent("error", 0, 0, e is InputError or ServerBusyException ? e.Message : $"{e.GetType().Name}: {e.Message}"));
                }
            });
            return job;
        }
    }

    /// <summary>Writes a job's events as server-sent events until it finishes or the client leaves.</summary>
    public static async Task StreamAsync(Job job, HttpResponse response, JsonSerializerOptions json, CancellationToken aborted)
    {
        int sent = 0;
        while (!aborted.IsCancellationRequested)
        {
            var (events, changed) = job.Read(sent);
            foreach (var e in events)
            {
                await response.WriteAsync($"event: {e.Type}\ndata: {JsonSerializer.Serialize(e, json)}\n\n", aborted);
                sent++;
                if (e.Type is "result" or "error" or "cancelled") return;
            }
            await response.Body.FlushAsync(aborted);
            await changed.WaitAsync(aborted);
        }
    }
}

