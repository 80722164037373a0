//! Auditor helpers of the demo that read decrypted batches without the analytics engine: the
//! `donor` column of a Parquet file, read with the Arrow Parquet reader.

use anyhow::{anyhow, Context, Result};
use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use datadonor_schemas::pseudonym::Pseudonym;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

/// The donor pseudonym of every row of a Parquet file.
pub(crate) fn donors_in_parquet(bytes: &[u8]) -> Result<Vec<Pseudonym>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(bytes))
        .context("reading a decrypted batch as Parquet")?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["donor"]);
    let reader = builder.with_projection(mask).build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let col = batch
            .column_by_name("donor")
            .ok_or_else(|| anyhow!("batch has no donor column"))?;
        let col = arrow::compute::cast(col, &DataType::Utf8)?;
        let col = col
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| anyhow!("donor column is not text"))?;
        for i in 0..col.len() {
            let v = col.value(i);
            out.push(
                Pseudonym::from_hex(v).ok_or_else(|| anyhow!("donor {v:?} is not a pseudonym"))?,
            );
        }
    }
    Ok(out)
}
