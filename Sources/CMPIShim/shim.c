#include "CMPIShim.h"

MPI_Comm sura_mpi_comm_world(void) { return MPI_COMM_WORLD; }
MPI_Comm sura_mpi_comm_null(void) { return MPI_COMM_NULL; }
MPI_Datatype sura_mpi_float(void) { return MPI_FLOAT; }
MPI_Datatype sura_mpi_byte(void) { return MPI_BYTE; }
MPI_Datatype sura_mpi_int(void) { return MPI_INT; }
MPI_Op sura_mpi_sum(void) { return MPI_SUM; }
MPI_Op sura_mpi_max(void) { return MPI_MAX; }
MPI_Request sura_mpi_request_null(void) { return MPI_REQUEST_NULL; }
MPI_Status *sura_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
int sura_mpi_any_source(void) { return MPI_ANY_SOURCE; }
int sura_mpi_success(void) { return MPI_SUCCESS; }
int sura_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
int sura_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
