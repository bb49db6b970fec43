namespace Loupe.Serve.Tests;

/// <summary>Jobs without a model or a server: cancelling one that is surely still running, and the running bound.</summary>
public class JobManagerTests
{
    static async Task UntilFinished(Job job)
    {
        while (!job.Finished) await job.Read(0).Changed.WaitAsync(TimeSpan.FromSeconds(30));
    }

    [Fact]
    public async Task A_running_job_is_cancelled_and_its_last_event_says_so()
    {
        var manager = new JobManager(maxRunning: 1);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var job = manager.Start("wait", async (job, cancel) =>
        {
            job.Report(new JobEvent("progress", 1, 2, "first half"));
            started.SetResult();
            await Task.Delay(Timeout.Infinite, cancel); // runs until cancelled
            return "never";
        })!;
        await started.Task.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal("running", job.State);
        Assert.Null(manager.Start("second", (_, _) => Task.FromResult<object>("x"))); // one at a time
        job.Cancel.Cancel();
        await UntilFinished(job);
        Assert.Equal("cancelled", job.State);
        Assert.Equal(["progress", "cancelled"], job.Read(0).Events.Select(e => e.Type));
        Assert.Same(manager.Find(job.Id), job);
        var next = manager.Start("second", (_, _) => Task.FromResult<object>("x"));
        Assert.NotNull(next); // the cancelled job no longer counts
        await UntilFinished(next);
        Assert.Equal("done", next.State);
    }
}
