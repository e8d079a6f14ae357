from zooscope import io
from zooscope.failures import write_failed_jacobian
from zooscope.jobs import run_model_job

output = snakemake.output


def body(log):
    import torch

    from zooscope.config import JacobianSettings
    from zooscope.jacobian.compute import model_jacobian, write_spectra
    from zooscope.jacobian.data import load_samples
    from zooscope.jacobian.rebuild import rebuild_module
    from zooscope.zoo import DataSpec

    meta = io.read_json(snakemake.input.meta)
    network = rebuild_module(meta, io.read_json(snakemake.input.layers)["layers"], snakemake.input.weights)
    samples = load_samples(DataSpec.from_dict(snakemake.params.data))
    torch.set_num_threads(snakemake.threads)
    result = model_jacobian(network, samples.x, samples.y, JacobianSettings(**snakemake.params.settings),
                            min_evals=snakemake.params.min_evals)
    log.info("%s: %d of %d samples of %s, %s route, %d gradient passes", meta["model"], len(samples.y),
             samples.total, samples.source, result.route, result.passes)
    io.write_tsv(output.layers, result.layers)
    write_spectra(output.spectra, result.spectra)
    io.write_json(output.summary, {
        "model": meta["model"], "data": samples.source, "num_samples": len(samples.y),
        "data_total": samples.total, "route": result.route, "passes": result.passes,
        "loss": result.loss, "accuracy": result.accuracy, "metrics": result.metrics,
    })


def write_failed(failure):
    from zooscope.jacobian.compute import JACOBIAN_LAYER_COLUMNS

    write_failed_jacobian(output.layers, output.summary, output.spectra, snakemake.wildcards.model,
                          JACOBIAN_LAYER_COLUMNS, failure)


run_model_job(snakemake, name="jacobian", stage="jacobian", body=body, record=output.summary,
              upstream=[snakemake.input.meta], write_failed=write_failed)
