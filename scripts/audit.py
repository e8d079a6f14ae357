import pandas as pd

from zooscope import io
from zooscope.config import FitSettings
from zooscope.analysis.discrimination import noise_levels
from zooscope.analysis.metrics import read_layers_table
from zooscope.spectra.shared_cache import zoo_sharing
from zooscope.analysis.regression import read_models_table
from zooscope.jobs import job
from zooscope.report.audit_card import (STATUS_COLUMNS, audit_table, card_blocks, summary_blocks, to_html,
                                        to_markdown)

with job(snakemake, name="audit"):
    models = snakemake.params.models
    series_of = dict(zip(models, snakemake.params.series, strict=True))
    layers = {model: read_layers_table(path) for model, path in zip(models, snakemake.input.layers, strict=True)}
    noise = noise_levels(io.read_json(path) for path in snakemake.input.metas)
    discrimination = pd.read_csv(snakemake.input.discrimination, sep="\t")
    table = read_models_table(snakemake.input.models).set_index("model", drop=False)
    intervals = {model: (table.loc[model, "alpha_lo"], table.loc[model, "alpha_hi"]) for model in models}
    status_of = {model: tuple("" if pd.isna(table.loc[model, c]) else str(table.loc[model, c]) for c in STATUS_COLUMNS)
                 for model in models}
    level = FitSettings(**snakemake.params.fit).level
    audit = audit_table(series_of, layers, intervals, status_of)
    io.write_tsv(snakemake.output.table, audit)
    sharing = zoo_sharing(io.read_json(path) for path in snakemake.input.layer_lists)
    summary = [*summary_blocks(audit, discrimination, level=level), ("h2", "Computed once across the zoo"),
               ("p", sharing.sentence(snakemake.params.shared_cache))]
    io.write_text(snakemake.output.summary_md, to_markdown(summary))
    io.write_text(snakemake.output.summary_html, to_html(summary, title="zooscope: zoo summary"))
    for model, card_md, card_html in zip(models, snakemake.output.cards, snakemake.output.card_pages, strict=True):
        blocks = card_blocks(model, audit, discrimination, noise.get(model), level=level, layers=layers[model],
                             base=snakemake.params.bases[model])
        io.write_text(card_md, to_markdown(blocks))
        io.write_text(card_html, to_html(blocks, title=f"zooscope: audit card of {model}"))
